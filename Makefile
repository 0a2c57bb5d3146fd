# mixln.cu build. CPU targets need only g++ and Catch2; CUDA targets need nvcc (no GPU to build).
#   make train_mixln_cpu   the CPU reference trainer
#   make test              builds and runs every test binary, ending with "total: N passed, M failed"
#   make clean

CXX ?= g++
CXXFLAGS ?= -O2 -march=native -fopenmp -std=c++17 -Wall -Wextra -Wno-unused-parameter
BUILD := build

# Catch2 2.x is header-only; Catch2 3.x (the GPU machine) needs its library.
CATCH_LIBS := $(shell test -e /usr/include/catch2/catch_all.hpp && echo -lCatch2)

HEADERS := $(wildcard core/*.h kernels/cpu/*.h dataloader.h)
TEST_HEADERS := $(wildcard test/*.h)

.PHONY: all test clean
all: train_mixln_cpu analyze_mixln_cpu

train_mixln_cpu: train_mixln_cpu.cpp $(HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@

analyze_mixln_cpu: analyze_mixln_cpu.cpp $(HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@

$(BUILD)/test_main.o: test/main.cpp
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/%.o: test/%.cpp $(HEADERS) $(TEST_HEADERS)
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) -c $< -o $@

CPU_TESTS := test_reference_kernels test_reference_model test_analysis test_distributed test_dataloader test_checkpoint test_trainer_cpu
$(BUILD)/test_cpu: $(BUILD)/test_main.o $(addprefix $(BUILD)/,$(addsuffix .o,$(CPU_TESTS)))
	$(CXX) $(CXXFLAGS) $^ -o $@ $(CATCH_LIBS)

test: $(BUILD)/test_cpu train_mixln_cpu analyze_mixln_cpu
	test/run_tests.sh $(BUILD)/test_cpu

clean:
	rm -rf $(BUILD) train_mixln_cpu analyze_mixln_cpu
