// The scalar instantiation of the PQ scan and scalar-quantizer kernels (see pq_kernels-inl.hpp and
// sq_kernels-inl.hpp; ISA flags come from CMake).
#define SHOAL_PQ_NS pq_scalar
#define SHOAL_PQ_LEVEL ::shoal::simd_level::scalar
#define SHOAL_PQ_ISA 0
#include "quant/pq_kernels-inl.hpp"
#include "quant/sq_kernels-inl.hpp"
