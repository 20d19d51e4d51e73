// The scalar instantiation of the distance kernels (see kernels-inl.hpp; ISA flags come from CMake).
#define SHOAL_KERNEL_NS scalar
#define SHOAL_KERNEL_LEVEL ::shoal::simd_level::scalar
#include "distance/kernels-inl.hpp"
