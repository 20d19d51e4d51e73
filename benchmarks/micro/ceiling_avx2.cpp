// The AVX2 + FMA machine ceilings (see ceiling-inl.hpp; ISA flags come from CMake).
#define SHOAL_CEILING_NS avx2
#define SHOAL_CEILING_TABLE avx2_ceilings
#define SHOAL_CEILING_ARCH xsimd::fma3<xsimd::avx2>
#define SHOAL_CEILING_FMA_CHAINS 12
#include "micro/ceiling-inl.hpp"
