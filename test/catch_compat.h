// Include Catch2 whichever major version is installed: 2.x (Debian bookworm, header-only
// catch2/catch.hpp) or 3.x (the GPU machine, catch2/catch_all.hpp linked with -lCatch2).
#pragma once
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#define MIXLN_CATCH3 1
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif
