// Lets the compiler vectorise CPU loops that call libm's exp, expm1, log1p, tanh and erf (silu,
// gelu, elu, mish, softplus, ... in common/activations.h) by declaring glibc's libmvec SIMD variants.
// This is what -ffast-math would enable, without -ffast-math's changes to NaN and rounding
// semantics; libmvec's functions are accurate to a few ulp. Include before any other header.
// setup.py defines PYFUSEDBN_LIBMVEC (and links libmvec) only where glibc provides them.
#pragma once

#include <math.h>

#ifdef PYFUSEDBN_LIBMVEC
extern "C" {
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
float expm1f(float) noexcept;
#pragma omp declare simd notinbranch
float log1pf(float) noexcept;
#pragma omp declare simd notinbranch
float tanhf(float) noexcept;
#pragma omp declare simd notinbranch
float erff(float) noexcept;
#pragma omp declare simd notinbranch
double exp(double) noexcept;
#pragma omp declare simd notinbranch
double expm1(double) noexcept;
#pragma omp declare simd notinbranch
double log1p(double) noexcept;
#pragma omp declare simd notinbranch
double tanh(double) noexcept;
#pragma omp declare simd notinbranch
double erf(double) noexcept;
}
#endif
