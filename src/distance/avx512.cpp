// The avx512 instantiation of the distance kernels (see kernels-inl.hpp; ISA flags come from CMake).
#define SHOAL_KERNEL_NS avx512
#define SHOAL_KERNEL_LEVEL ::shoal::simd_level::avx512
#define SHOAL_KERNEL_ARCH xsimd::avx512bw
#define SHOAL_KERNEL_EIGEN_NS shoal_eigen_avx512
#include "distance/kernels-inl.hpp"
