/* Shapes of common open models: the warm-up's default matrix and the tuner's presets.
 * Figures from each model's published config.json. */
#include <stddef.h>

#include "yk/jit.h"

static const yk_model_preset presets[] = {
    /* name          hidden q_heads kv_heads head_dim intermediate activation */
    {"llama-3-8b", 4096, 32, 8, 128, 14336, "silu"},      {"llama-3-70b", 8192, 64, 8, 128, 28672, "silu"},
    {"mistral-7b", 4096, 32, 8, 128, 14336, "silu"},      {"qwen2.5-7b", 3584, 28, 4, 128, 18944, "silu"},
    {"gemma-2-9b", 3584, 16, 8, 256, 14336, "gelu_tanh"},
};

int yk_model_preset_count(void) { return (int)(sizeof presets / sizeof presets[0]); }

const yk_model_preset *yk_model_preset_get(int index) {
  return index >= 0 && index < yk_model_preset_count() ? &presets[index] : NULL;
}
