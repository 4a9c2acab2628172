// The emulator's stand-in for cuda_bf16.h: __nv_bfloat16 and its conversions (cuda_emu/half.h).
#pragma once
#include "cuda_emu/half.h"
