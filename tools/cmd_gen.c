/* yk gen OP [--field value ...] [--key ARCH] [--compile ARCH] */
#include <stdio.h>
#include <string.h>

#include "tools/cli.h"

static int list_ops(FILE *to) {
  fprintf(to, "usage: yk gen OP --dtype bf16 [--FIELD VALUE ...] [--key ARCH | --compile ARCH]\n"
              "Prints the generated source; --key prints the cache key for ARCH instead, --compile\n"
              "compiles the spec for ARCH into the cache.\n\nops and fields:\n");
  for (int op = 0; op < yk_op_count(); op++) {
    fprintf(to, "  %s: %s\n    dtype: f32, f16 or bf16\n", yk_op_name(op), yk_op_summary(op));
    for (int f = 0; f < yk_op_field_count(op); f++) {
      const yk_spec_field *field = yk_op_field(op, f);
      fprintf(to, "    %s: %s; ", field->name, field->help);
      if (field->choices)
        for (int c = 0; c <= field->max; c++) fprintf(to, "%s%s", c ? "|" : "", field->choices[c]);
      else
        fprintf(to, "%d..%d%s", (int)field->min, (int)field->max, field->pow2 ? ", a power of two" : "");
      fprintf(to, "%s\n", field->has_default ? "" : " (required)");
    }
  }
  return to == stdout ? 0 : 2;
}

int cmd_gen(int argc, char **argv) {
  if (argc < 2 || argv[1][0] == '-') return list_ops(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
  char spec[1024];
  size_t used = (size_t)snprintf(spec, sizeof spec, "%s:", argv[1]);
  const char *key_arch = NULL, *compile_arch = NULL;
  for (int i = 2; i < argc; i++) {
    const char *v;
    if ((v = cli_option(argc, argv, &i, "--key")))
      key_arch = v;
    else if ((v = cli_option(argc, argv, &i, "--compile")))
      compile_arch = v;
    else if (!strncmp(argv[i], "--", 2) && i + 1 < argc && !strchr(argv[i], '='))
      used += (size_t)snprintf(spec + used, sizeof spec - used, "%s%s=%s", spec[used - 1] == ':' ? "" : ",",
                               argv[i] + 2, argv[i + 1]),
          i++;
    else
      return cli_fail("gen", "unexpected argument '%s' (options are --FIELD VALUE)", argv[i]);
    if (used >= sizeof spec) return cli_fail("gen", "spec too long");
  }
  if (spec[used - 1] == ':') spec[used - 1] = '\0';
  yk_ctx *ctx = cli_ctx(YK_DEVICE_CPU);
  int status = 0;
  char *text = NULL, key[33];
  int compiled = 0;
  if (key_arch) {
    if (yk_spec_key(ctx, spec, key_arch, key) != YK_OK)
      status = cli_fail("gen", "%s", yk_ctx_last_error(ctx));
    else
      printf("%s\n", key);
  } else if (compile_arch) {
    if (yk_spec_compile(ctx, spec, compile_arch, &compiled) != YK_OK)
      status = cli_fail("gen", "%s", yk_ctx_last_error(ctx));
    else if (yk_spec_canonical(ctx, spec, &text) == YK_OK)
      printf("%s for %s: %s\n", text, compile_arch, compiled ? "compiled" : "already cached");
  } else if (yk_spec_source(ctx, spec, &text) != YK_OK) {
    status = cli_fail("gen", "%s", yk_ctx_last_error(ctx));
  } else {
    fputs(text, stdout);
  }
  yk_free(text);
  yk_ctx_destroy(ctx);
  return status;
}
