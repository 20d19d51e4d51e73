// The avx2 instantiation of the PQ scan and scalar-quantizer kernels (see pq_kernels-inl.hpp and
// sq_kernels-inl.hpp; ISA flags come from CMake).
#define SHOAL_PQ_NS pq_avx2
#define SHOAL_PQ_LEVEL ::shoal::simd_level::avx2
#define SHOAL_PQ_ISA 2
#include "quant/pq_kernels-inl.hpp"
#include "quant/sq_kernels-inl.hpp"
