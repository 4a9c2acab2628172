// The emulator's stand-in for the CUDA runtime header (tools/cuda_emulator/include/cuda_emu/).
#pragma once
#include "cuda_emu/runtime.h"
