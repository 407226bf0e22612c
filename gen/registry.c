/* The op registry: every file in gen/ops defines one yk_op_def, listed by the build in
 * yk_op_list.h (sorted by name), so the registry never needs editing. */
#include <string.h>

#include "gen/spec.h"

#define YK_OP(name) extern const yk_op_def yk_op_##name;
#include "yk_op_list.h"
#undef YK_OP

static const yk_op_def *const ops[] = {
#define YK_OP(name) &yk_op_##name,
#include "yk_op_list.h"
#undef YK_OP
};

int yk_registry_count(void) { return (int)(sizeof ops / sizeof ops[0]); }

const yk_op_def *yk_registry_op(int index) { return index >= 0 && index < yk_registry_count() ? ops[index] : NULL; }

int yk_registry_find(const char *name) {
  for (int i = 0; name && i < yk_registry_count(); i++)
    if (strcmp(ops[i]->name, name) == 0) return i;
  return -1;
}

/* ---- public enumeration (yk/jit.h) ---- */
int yk_op_count(void) { return yk_registry_count(); }

const char *yk_op_name(int op) { return yk_registry_op(op) ? ops[op]->name : NULL; }

const char *yk_op_summary(int op) { return yk_registry_op(op) ? ops[op]->summary : NULL; }

int yk_op_field_count(int op) { return yk_registry_op(op) ? ops[op]->field_count : 0; }

const yk_spec_field *yk_op_field(int op, int field) {
  const yk_op_def *def = yk_registry_op(op);
  return def && field >= 0 && field < def->field_count ? &def->fields[field] : NULL;
}
