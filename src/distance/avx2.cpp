// The avx2 instantiation of the distance kernels (see kernels-inl.hpp; ISA flags come from CMake).
#define SHOAL_KERNEL_NS avx2
#define SHOAL_KERNEL_LEVEL ::shoal::simd_level::avx2
#define SHOAL_KERNEL_ARCH xsimd::fma3<xsimd::avx2>
#define SHOAL_KERNEL_EIGEN_NS shoal_eigen_avx2
#include "distance/kernels-inl.hpp"
