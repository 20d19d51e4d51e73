// The AVX-512 machine ceilings (see ceiling-inl.hpp; ISA flags come from CMake).
#define SHOAL_CEILING_NS avx512
#define SHOAL_CEILING_TABLE avx512_ceilings
#define SHOAL_CEILING_ARCH xsimd::avx512f
#define SHOAL_CEILING_FMA_CHAINS 16
#include "micro/ceiling-inl.hpp"
