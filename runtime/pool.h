/* The pool's insides that the KV cache needs: where its memory lives. */
#ifndef YK_RUNTIME_POOL_H
#define YK_RUNTIME_POOL_H

#include "yk/pool.h"

yk_ctx *yk_pool_context(const yk_pool *pool);

#endif
