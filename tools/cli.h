/* What the yk subcommands share: a context that logs to stderr, option parsing, formatting. */
#ifndef YK_TOOLS_CLI_H
#define YK_TOOLS_CLI_H

#include <stddef.h>

#include "yk/yk.h"

/* A context for a subcommand: warnings go to stderr. device: YK_DEVICE_AUTO or CPU. Exits the
 * process with a message if the context cannot be made. */
yk_ctx *cli_ctx(yk_device_kind device);

/* "--name value" or "--name=value" at argv[*i]; advances *i past what it consumed. NULL if argv[*i]
 * is not --name. Exits with usage help if the value is missing. */
const char *cli_option(int argc, char **argv, int *i, const char *name);

/* 1.5 KiB, 3.2 MiB, ... */
const char *cli_bytes(double bytes, char *buf, size_t size);

/* Prints "yk <cmd>: <message>" to stderr; returns 1 (the exit status). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef int (*cli_command_fn)(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_warm(int argc, char **argv);
int cmd_cache(int argc, char **argv);
int cmd_gen(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tune(int argc, char **argv);

#endif
