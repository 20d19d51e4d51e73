#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#ifdef SHOAL_TSAN
// libstdc++ 12's std::atomic<std::shared_ptr> guards its pointer with a lock bit that ThreadSanitizer
// does not take for synchronisation, so every load racing a store is reported (google/sanitizers#1558);
// the collection publishes its layouts and replica indexes through it. Races on what the pointers point
// to are reported from other frames and stay visible.
extern "C" const char* __tsan_default_suppressions() { return "race:std::_Sp_atomic\n"; }
#endif
