// The emulator's stand-in for cuda_fp16.h: __half and its conversions (cuda_emu/half.h).
#pragma once
#include "cuda_emu/half.h"
