# mixln.cu build. CPU targets need only g++ and Catch2; CUDA targets need nvcc (no GPU to build).
#   make train_mixln_cpu   the CPU reference trainer
#   make test              builds and runs every test binary, ending with "total: N passed, M failed"
#                          (installs Catch2 and scripts/requirements.txt first if they are missing)
#   make test SANITIZE=1   the CPU tests and trainers built with AddressSanitizer and UBSan, under build/sanitize
#   make fuzz              libFuzzer targets of the file readers (clang), each run FUZZ_SECONDS
#   make clean
# Flags given on the command line or in the environment add to the Makefile's: make CXXFLAGS+=-g
# (or CXXFLAGS=-g) keeps -O2 -fopenmp -std=c++17 ...; a later -O0 still wins over -O2.

CXX ?= g++
override CXXFLAGS := -O2 -march=native -fopenmp -std=c++17 -Wall -Wextra -Wno-unused-parameter $(CXXFLAGS)
BUILD := build
SANITIZE ?= 0
ifeq ($(SANITIZE),1)
override CXXFLAGS += -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
BUILD := build/sanitize
endif
CPU_TOOLS := $(if $(filter 1,$(SANITIZE)),$(BUILD)/train_mixln_cpu $(BUILD)/analyze_mixln_cpu,train_mixln_cpu analyze_mixln_cpu)

# Catch2 2.x is header-only; Catch2 3.x (the GPU machine) needs its library. Evaluated when linking,
# after `deps` may have installed it.
CATCH_LIBS = $(shell test -e /usr/include/catch2/catch_all.hpp && echo -lCatch2)

HEADERS := $(wildcard core/*.h kernels/cpu/*.h tokenizer/*.h dataloader.h)
TEST_HEADERS := $(wildcard test/*.h)

.PHONY: all test clean demo deps-test gpu-check-build gpu-check
all: train_mixln_cpu analyze_mixln_cpu logits_mixln_cpu

train_mixln_cpu analyze_mixln_cpu logits_mixln_cpu: %: %.cpp $(HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@

$(BUILD)/train_mixln_cpu $(BUILD)/analyze_mixln_cpu: $(BUILD)/%: %.cpp $(HEADERS)
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) $< -o $@

# What `make test` needs on a fresh Debian machine (root or sudo): Catch2 and the Python packages.
deps-test:
	@scripts/install_deps.sh test

$(BUILD)/test_main.o: test/main.cpp test/summary_listener.h | deps-test
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/%.o: test/%.cpp $(HEADERS) $(TEST_HEADERS) | deps-test
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) -c $< -o $@

CPU_TESTS := test_reference_kernels test_tiled_kernels test_grad_accumulation test_attention_numerics test_reference_model test_analysis test_distributed test_dataloader test_checkpoint test_trainer_cpu test_trainer_ranks test_tokenizer test_rendezvous test_presets test_padded_eval test_padded_ffn test_dev_tolerances

# The dev/ benchmarks' tolerances, tested on the CPU against emulations of their kernels.
$(BUILD)/test_dev_tolerances.o: dev/tolerances.h

$(BUILD)/test_cpu: $(BUILD)/test_main.o $(addprefix $(BUILD)/,$(addsuffix .o,$(CPU_TESTS)))
	$(CXX) $(CXXFLAGS) $^ -o $@ $(CATCH_LIBS)

# SANITIZE=1 runs the Catch2 suite with sanitized trainers (test/test_scripts.sh drives ./train_mixln_cpu
# from Python: the plain build's job).
ifeq ($(SANITIZE),1)
test: $(BUILD)/test_cpu $(CPU_TOOLS)
	MIXLN_CPU_TRAINER=$(BUILD)/train_mixln_cpu MIXLN_CPU_ANALYZER=$(BUILD)/analyze_mixln_cpu test/run_tests.sh $(BUILD)/test_cpu
else
test: $(BUILD)/test_cpu $(CPU_TOOLS) logits_mixln_cpu
	test/run_tests.sh $(BUILD)/test_cpu test/test_scripts.sh test/test_hf_bridge.py test/test_reproduce.sh test/test_cost_model.py $(GPU_TESTS)
endif

# The sweep that calibrates the attention checks (test/attention_checks.h) on the CPU emulation of the
# kernels' rounding; its table is in docs/tests.md, "GPU tolerances". CPU only, ~3 CPU-minutes.
.PHONY: calibrate-attention
calibrate-attention: $(BUILD)/calibrate_attention
	$(BUILD)/calibrate_attention

$(BUILD)/calibrate_attention: dev/calibrate_attention.cpp $(HEADERS) $(TEST_HEADERS)
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) $< -o $@

demo: train_mixln_cpu analyze_mixln_cpu
	scripts/install_deps.sh demo
	scripts/demo.sh

# The exported Hugging Face models in torch and transformers against the CPU model (test/hf_check.py),
# in a virtual environment of its own from scripts/requirements-hf.txt (PyPI, about 3 GB to download).
HF_VENV := $(BUILD)/hf-venv
$(HF_VENV)/installed: scripts/requirements-hf.txt scripts/requirements.txt
	python3 -m venv $(HF_VENV)
	$(HF_VENV)/bin/pip install -q -r scripts/requirements-hf.txt
	touch $@

.PHONY: hf-check
hf-check: $(HF_VENV)/installed train_mixln_cpu logits_mixln_cpu
	[ -s data/kjv/val.bin ] || { scripts/get_kjv.sh data/kjv/kjv.txt && $(HF_VENV)/bin/python scripts/prepro_text.py --out data/kjv data/kjv/kjv.txt; }
	$(HF_VENV)/bin/python test/hf_check.py

clean:
	rm -rf $(BUILD) train_mixln_cpu analyze_mixln_cpu logits_mixln_cpu train_mixln

# libFuzzer targets (clang with -fsanitize=fuzzer; Debian: clang-14 libclang-rt-14-dev): the checkpoint
# and optimizer shard reader, the token shard reader with the data loader, the vocabulary reader.
# Each runs FUZZ_SECONDS from its committed seeds (fuzz/corpus/NAME, made by fuzz/make_seeds.py);
# what it finds new goes to build/fuzz/corpus_NAME, a crash to build/fuzz/crash-*.
FUZZ_CXX ?= $(firstword $(shell command -v clang++-14 clang++ 2>/dev/null))
FUZZ_FLAGS := -g -O1 -std=c++17 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_TARGETS := checkpoint shard vocab
FUZZ_SECONDS ?= 25
.PHONY: fuzz
fuzz: $(addprefix build/fuzz/fuzz_,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p build/fuzz/corpus_$$t; \
		build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=build/fuzz/ \
			build/fuzz/corpus_$$t fuzz/corpus/$$t > build/fuzz/fuzz_$$t.log 2>&1; \
		rc=$$?; \
		echo "fuzz_$$t: $(FUZZ_SECONDS) s, $$(grep -oE 'number_of_executed_units: *[0-9]+' build/fuzz/fuzz_$$t.log | grep -oE '[0-9]+') inputs, exit code $$rc"; \
		if [ $$rc -ne 0 ]; then tail -n 40 build/fuzz/fuzz_$$t.log; exit 1; fi; \
	done

build/fuzz/fuzz_%: fuzz/fuzz_%.cpp fuzz/fuzz_input.h $(HEADERS)
	@mkdir -p build/fuzz
	@test -n "$(FUZZ_CXX)" || { echo "make fuzz needs clang++ (Debian: apt-get install clang-14 libclang-rt-14-dev)"; exit 1; }
	$(FUZZ_CXX) $(FUZZ_FLAGS) $< -o $@

# ----------------------------------------------------------------------------------------------------
# CUDA: the GPU kernels (kernels/*.cuh) and their tests. Built wherever nvcc is found; running them
# needs a GPU (without one, test_gpu_kernels reports its test cases as skipped).
#   make PRECISION=FP32 ...   fp32 storage instead of bf16 (-DENABLE_FP32), built under build/fp32
# No --use_fast_math: the kernels here are memory-bound (elementwise, row reductions) or cuBLAS, so
# approximate math buys no measurable time, while it would cost accuracy the tests check: __expf's
# error grows with |x| (2 + 1.2|x| ulp) and flushing denormals to zero drops small probabilities and
# AdamW second moments. A compute-bound kernel can still call an intrinsic (__expf, exp2f) explicitly.
NVCC ?= nvcc
NVCC_FOUND := $(shell command -v $(NVCC))
PRECISION ?= BF16
override NVCC_FLAGS := -O3 -std=c++17 -Xcompiler -fopenmp \
	-gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=compute_80 $(NVCC_FLAGS)
NVCC_LIBS := -lcublasLt -lcublas
NCCL_LIBS := -lnccl  # train_mixln and its test: data parallelism
ifeq ($(PRECISION),FP32)
PRECISION_FLAGS := -DENABLE_FP32
CUDA_BUILD := $(BUILD)/fp32
else ifeq ($(PRECISION),BF16)
PRECISION_FLAGS :=
CUDA_BUILD := $(BUILD)
else
$(error PRECISION must be BF16 or FP32, not $(PRECISION))
endif
CUDA_HEADERS := $(wildcard kernels/*.cuh)

# gpu_main.cpp has no device code: nvcc hands it to the host compiler, with CUDA's include path.
$(CUDA_BUILD)/gpu_main.o: test/gpu_main.cpp test/summary_listener.h
	@mkdir -p $(CUDA_BUILD)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(CUDA_BUILD)/test_gpu_kernels.o: test/test_gpu_kernels.cu $(CUDA_HEADERS) $(HEADERS) test/catch_compat.h test/gpu_test_utils.cuh
	@mkdir -p $(CUDA_BUILD)
	$(NVCC) $(NVCC_FLAGS) $(PRECISION_FLAGS) -c $< -o $@

$(CUDA_BUILD)/test_gpu_attention.o: test/test_gpu_attention.cu $(CUDA_HEADERS) $(HEADERS) test/catch_compat.h test/gpu_test_utils.cuh test/attention_checks.h
	@mkdir -p $(CUDA_BUILD)
	$(NVCC) $(NVCC_FLAGS) $(PRECISION_FLAGS) -c $< -o $@

$(CUDA_BUILD)/test_gpu_kernels: $(CUDA_BUILD)/gpu_main.o $(CUDA_BUILD)/test_gpu_kernels.o $(CUDA_BUILD)/test_gpu_attention.o
	$(NVCC) $(NVCC_FLAGS) $^ -o $@ $(NVCC_LIBS) $(CATCH_LIBS)

# The GPU trainer, built per precision under $(CUDA_BUILD); ./train_mixln links to the one built last.
$(CUDA_BUILD)/train_mixln: train_mixln.cu data_parallel.cuh $(CUDA_HEADERS) $(HEADERS)
	@mkdir -p $(CUDA_BUILD)
	$(NVCC) $(NVCC_FLAGS) $(PRECISION_FLAGS) $< -o $@ $(NVCC_LIBS) $(NCCL_LIBS)

.PHONY: train_mixln bench
train_mixln: $(CUDA_BUILD)/train_mixln
	ln -sf $< $@

# test_gpu_trainer.cu includes train_mixln.cu (with TESTING: no main).
$(CUDA_BUILD)/test_gpu_trainer.o: test/test_gpu_trainer.cu train_mixln.cu data_parallel.cuh $(CUDA_HEADERS) $(HEADERS) test/catch_compat.h
	@mkdir -p $(CUDA_BUILD)
	$(NVCC) $(NVCC_FLAGS) $(PRECISION_FLAGS) -c $< -o $@

$(CUDA_BUILD)/test_gpu_trainer: $(CUDA_BUILD)/gpu_main.o $(CUDA_BUILD)/test_gpu_trainer.o
	$(NVCC) $(NVCC_FLAGS) $^ -o $@ $(NVCC_LIBS) $(NCCL_LIBS) $(CATCH_LIBS)

# Tokens/s and MFU of train_mixln on every Table 4 preset, on random tokens (needs a GPU).
bench: train_mixln
	dev/bench_trainer.sh

# Kernel microbenchmarks (issue 3): dev/<kernel>.cu -> $(CUDA_BUILD)/dev/<kernel>, numbered versions of
# each kernel validated against kernels/cpu, then timed (running them needs a GPU; not part of `make
# test`). `make dev && dev/run_all.sh` prints the table; PRECISION=FP32 builds them under build/fp32/dev.
DEV_BENCHMARKS := rmsnorm swiglu rope classifier adamw embedding attention matmul residual swiglu_gemm
.PHONY: dev
dev: $(addprefix $(CUDA_BUILD)/dev/,$(DEV_BENCHMARKS))

$(CUDA_BUILD)/dev/%: dev/%.cu $(wildcard dev/*.cuh) dev/tolerances.h $(CUDA_HEADERS) $(HEADERS) test/attention_checks.h
	@mkdir -p $(@D)
	$(NVCC) $(NVCC_FLAGS) $(PRECISION_FLAGS) $< -o $@ $(NVCC_LIBS)

# `make test` builds and runs the GPU tests too where nvcc exists, and checks that their runner skips
# only where no NVIDIA driver is installed (test/test_gpu_runner.sh). (Not with SANITIZE=1: the
# sanitizers instrument the host compiler's code, the CPU suite's.)
GPU_TESTS := $(if $(NVCC_FOUND),$(if $(filter 1,$(SANITIZE)),,$(CUDA_BUILD)/test_gpu_kernels $(CUDA_BUILD)/test_gpu_trainer))
test: $(GPU_TESTS)
test: GPU_TESTS += $(if $(NVCC_FOUND),test/test_gpu_runner.sh)
test: export GPU_RUNNER := $(CUDA_BUILD)/test_gpu_kernels

# The SASS guards (issue 23; scripts/sass_guards.py, docs/sass.md): every kernel of the trainer's sm_90a
# code, read with cuobjdump (PyPI's nvidia-cuda-cuobjdump and -nvdisasm, scripts/requirements.txt),
# against test/sass_expectations.txt. make test reads this precision's test_gpu_trainer.o (built for
# it anyway); test/test_sass_guards.sh skips only where nvcc is missing. `make sass-table` rewrites
# docs/sass.md's per-kernel tables for both precisions (the other one from a device-only cubin).
SASS_PRECISION := $(if $(filter FP32,$(PRECISION)),fp32,bf16)
sass_object = $(if $(filter $(1),$(SASS_PRECISION)),$(CUDA_BUILD)/test_gpu_trainer.o,$(BUILD)/sass/$(1)/train_mixln.cubin)
$(BUILD)/sass/%/train_mixln.cubin: train_mixln.cu data_parallel.cuh $(CUDA_HEADERS) $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) -O3 -std=c++17 -cubin -arch=sm_90a $(if $(filter fp32,$*),-DENABLE_FP32) $< -o $@
test: $(if $(NVCC_FOUND),$(if $(filter 1,$(SANITIZE)),,$(CUDA_BUILD)/test_gpu_trainer.o))
test: GPU_TESTS += test/test_sass_guards.sh
test: export SASS_OBJECTS := $(SASS_PRECISION)=$(CUDA_BUILD)/test_gpu_trainer.o
.PHONY: sass-table
sass-table: $(call sass_object,bf16) $(call sass_object,fp32) | deps-test
	python3 scripts/sass_guards.py table --into docs/sass.md bf16=$(call sass_object,bf16) fp32=$(call sass_object,fp32)

# ----------------------------------------------------------------------------------------------------
# The first minutes on a GPU (docs/gpu.md, "First run on a GPU"). `make gpu-check-build`, on any machine with
# nvcc, builds what a GPU run needs and copies it into build/gpu_check (to carry to the GPU machine with
# the source): both precisions' GPU tests (Catch2 compiled in, so they run wherever the CUDA libraries
# are, whatever Catch2 that machine has), train_mixln, the dev/ benchmarks, two random shards, and
# train_mixln as it was before issue 12 (before/train_mixln), for the throughput table's before and
# after. `make gpu-check` runs dev/gpu_check.sh on them and builds nothing, so copied timestamps or
# another Catch2 there cannot start a rebuild. GPU_CHECK_OUT: the report's directory (default $OUT, else
# build/gpu_check_report). Without a GPU it says so and succeeds (CI runs it).
GPU_CHECK := $(BUILD)/gpu_check
# The commit of the trainer before issue 12 (main before it). Its source comes out of git (git archive)
# into build/before/COMMIT and is built there by its own Makefile, with that commit's nvcc flags (sm_90a),
# once. GPU_CHECK_BEFORE= (empty) leaves it out: the throughput table then has no before rows.
GPU_CHECK_BEFORE ?= 3882668c8c6ffbc6e9a57d7a9586bd6a4a64e9b7
BEFORE_TRAINER := $(if $(GPU_CHECK_BEFORE),build/before/$(GPU_CHECK_BEFORE)/build/train_mixln)
gpu-check-build: $(BEFORE_TRAINER)
	$(MAKE) PRECISION=BF16 $(BUILD)/test_gpu_kernels $(BUILD)/test_gpu_trainer $(BUILD)/train_mixln dev
	$(MAKE) PRECISION=FP32 $(BUILD)/fp32/test_gpu_kernels $(BUILD)/fp32/test_gpu_trainer
	rm -rf $(GPU_CHECK)
	mkdir -p $(GPU_CHECK)/bf16/dev $(GPU_CHECK)/fp32
	cp $(BUILD)/test_gpu_kernels $(BUILD)/test_gpu_trainer $(BUILD)/train_mixln $(GPU_CHECK)/bf16/
	cp $(addprefix $(BUILD)/dev/,$(DEV_BENCHMARKS)) $(GPU_CHECK)/bf16/dev/
	cp $(BUILD)/fp32/test_gpu_kernels $(BUILD)/fp32/test_gpu_trainer $(GPU_CHECK)/fp32/
	$(if $(BEFORE_TRAINER),mkdir -p $(GPU_CHECK)/before && cp $(BEFORE_TRAINER) $(GPU_CHECK)/before/)
	python3 scripts/make_random_shard.py --out $(GPU_CHECK)/random.bin --tokens 524289 --vocab-size 32000
	python3 scripts/make_random_shard.py --out $(GPU_CHECK)/random_small.bin --tokens 300000 --vocab-size 256
	@du -sh $(GPU_CHECK)

build/before/%/build/train_mixln:
	@git cat-file -e $*^{commit} 2>/dev/null || { echo "gpu-check-build: commit $* (GPU_CHECK_BEFORE, the trainer before issue 12) is not in this clone: git fetch --unshallow, or leave it out with GPU_CHECK_BEFORE="; exit 1; }
	rm -rf build/before/$* && mkdir -p build/before/$*
	git archive $* | tar -x -C build/before/$*
	$(MAKE) -C build/before/$* PRECISION=BF16 build/train_mixln

gpu-check:
	dev/gpu_check.sh $(GPU_CHECK_OUT)

# ----------------------------------------------------------------------------------------------------
# The CUDA emulation (emu/, docs/emulation.md): the same kernel, test and trainer sources, rewritten by
# emu/cuda_to_cpp.py (launches, __shared__, kernel entries; every line kept in place) into
# $(EMU)/src, compiled by g++ against NVIDIA's headers and emu/, and run on the CPU. No GPU, no driver.
#   make test-emu             the emulated suites only (bf16 and fp32), with the race checker's set
#   EMU_BLOCK_ORDER=reverse|shuffle, EMU_LANE_ORDER=reverse|shuffle, EMU_SEED=N: scheduling orders
EMU := build/emu
EMU_SRC := $(EMU)/src
CUDA_INCLUDE ?= $(firstword $(wildcard /usr/local/cuda/include) $(patsubst %/bin/nvcc,%/include,$(NVCC_FOUND)))
EMU_SOURCES := $(wildcard *.cu *.cuh *.h core/*.h kernels/*.cuh kernels/cpu/*.h tokenizer/*.h dev/*.cu dev/*.cuh dev/*.h dev/emu/*.cu test/*.cu test/*.cuh test/*.h test/emu/*.cu)
EMU_HEADERS := $(wildcard emu/*.h emu/include/*.h emu/include/*/*.cuh emu/include/*/*/*.cuh)
EMU_LIB_SOURCES := $(wildcard emu/*.cpp)
EMU_BASE_FLAGS := -std=c++17 -g -fno-strict-aliasing -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -I$(CUDA_INCLUDE)
EMU_OPT ?= -O2
# emu/include first: its mma.h and cub/ stand in for the CUDA toolkit's (nvcc-only) headers of those names
EMU_FLAGS := -Iemu/include $(EMU_BASE_FLAGS) $(EMU_OPT) -include emu/emu.h $(EMU_CXXFLAGS)
EMU_LIBS := -lrt -lpthread

$(EMU_SRC)/.stamp: $(EMU_SOURCES) emu/cuda_to_cpp.py
	@mkdir -p $(EMU_SRC)
	python3 emu/cuda_to_cpp.py --out $(EMU_SRC) $(EMU_SOURCES)
	@touch $@

$(EMU)/lib/%.o: emu/%.cpp $(EMU_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(EMU_BASE_FLAGS) $(EMU_OPT) -Iemu/include $(EMU_CXXFLAGS) -c $< -o $@

EMU_LIB := $(patsubst emu/%.cpp,$(EMU)/lib/%.o,$(EMU_LIB_SOURCES))

# One object per (precision, source): build/emu/{bf16,fp32}/<path>.o from the rewritten source, with
# the rewritten headers it includes as dependencies (-MMD; the rewriter rewrites only changed files).
# The dependency files live apart (build/emu/deps), where no pattern rule of this Makefile matches them.
$(EMU_SRC)/%: $(EMU_SRC)/.stamp ;
$(EMU)/bf16/%.o: $(EMU_SRC)/% $(EMU_HEADERS) | deps-test
	@mkdir -p $(@D) $(dir $(EMU)/deps/bf16/$*)
	$(CXX) $(EMU_FLAGS) -MMD -MP -MF $(EMU)/deps/bf16/$*.d -x c++ -c $< -o $@
$(EMU)/fp32/%.o: $(EMU_SRC)/% $(EMU_HEADERS) | deps-test
	@mkdir -p $(@D) $(dir $(EMU)/deps/fp32/$*)
	$(CXX) $(EMU_FLAGS) -MMD -MP -MF $(EMU)/deps/fp32/$*.d -DENABLE_FP32 -x c++ -c $< -o $@
$(EMU)/deps/%.d: ;
-include $(shell find $(EMU)/deps -name '*.d' 2>/dev/null)
$(EMU)/main.o: test/gpu_main.cpp test/summary_listener.h | deps-test
	@mkdir -p $(@D)
	$(CXX) $(EMU_BASE_FLAGS) $(EMU_OPT) -c $< -o $@

# The GPU kernel tests, unchanged, in both precisions.
$(EMU)/test_gpu_kernels-%: $(EMU)/main.o $(EMU)/%/test/test_gpu_kernels.cu.o $(EMU)/%/test/test_gpu_attention.cu.o $(EMU_LIB)
	$(CXX) $^ -o $@ $(EMU_LIBS) $(CATCH_LIBS)
# The emulated tensor-core and PTX instructions against the PTX ISA's tables (emu/ptx.h, emu/include/mma.h).
$(EMU)/test_emu_ptx-%: $(EMU)/main.o $(EMU)/%/test/emu/test_ptx.cu.o $(EMU_LIB)
	$(CXX) $^ -o $@ $(EMU_LIBS) $(CATCH_LIBS)
# The emulation's own tests (test/emu/): the execution model, cuBLASLt, CUB (bf16 build; they do not use floatX).
$(EMU)/test_emu_%: $(EMU)/main.o $(EMU)/bf16/test/emu/test_%.cu.o $(EMU_LIB)
	$(CXX) $^ -o $@ $(EMU_LIBS) $(CATCH_LIBS)

# Keep the objects: a relink should not recompile them.
.SECONDARY:

EMU_DEV := $(foreach p,bf16 fp32,$(addprefix $(EMU)/$(p)/dev/,$(DEV_BENCHMARKS)))
EMU_TESTS := $(EMU)/test_emu_execution $(EMU)/test_emu_cublaslt $(EMU)/test_emu_cub $(EMU)/test_emu_nccl $(EMU)/test_emu_ptx-bf16 \
	$(EMU)/test_gpu_kernels-bf16 $(EMU)/test_gpu_kernels-fp32 test/emu/dev_versions.sh test/emu/race_check.sh \
	test/emu/planted_bugs.sh
# What the test scripts run: the dev/ benchmarks (plain and race-checked), the planted bugs' libraries.
EMU_SCRIPT_DEPS = $(EMU_DEV) $(EMU_RACE_BINS) $(EMU_LIB) $(EMU_RACE_LIB) $(EMU)/main.o $(EMU_RACE)/main.o \
	$(EMU)/bf16/train_mixln_emu $(EMU)/fp32/train_mixln_emu

# The GPU trainer on the emulation (issue 22): train_mixln.cu unchanged, same flags as train_mixln, a
# binary to step through in gdb on any machine. ./train_mixln_emu links to the one built last
# (make PRECISION=FP32 train_mixln_emu for fp32). Its tests: the GPU trainer's Catch2 suite
# (test/test_gpu_trainer.cu) and test/emu/test_trainer_emu.sh against train_mixln_cpu.
EMU_PRECISION := $(if $(filter FP32,$(PRECISION)),fp32,bf16)
$(EMU)/%/train_mixln_emu: $(EMU)/%/train_mixln.cu.o $(EMU_LIB)
	$(CXX) $^ -o $@ $(EMU_LIBS)
.PHONY: train_mixln_emu
train_mixln_emu: $(EMU)/$(EMU_PRECISION)/train_mixln_emu
	ln -sf $< $@
$(EMU)/test_gpu_trainer-%: $(EMU)/main.o $(EMU)/%/test/test_gpu_trainer.cu.o $(EMU_LIB)
	$(CXX) $^ -o $@ $(EMU_LIBS) $(CATCH_LIBS)
EMU_TRAINER_TESTS := $(EMU)/test_gpu_trainer-bf16 $(EMU)/test_gpu_trainer-fp32 test/emu/test_trainer_emu.sh
EMU_TESTS += $(EMU_TRAINER_TESTS)
# make gpu-check's correctness phase on the emulated binaries (dev/gpu_check.sh with GPU_CHECK_EMULATED=1).
EMU_TESTS += test/emu/gpu_check_emu.sh
test-emu: $(filter-out %.sh,$(EMU_TRAINER_TESTS)) $(EMU)/bf16/train_mixln_emu $(EMU)/fp32/train_mixln_emu train_mixln_cpu

# The dev/ benchmarks in emulation: each version validated on its small shapes (DEV_SMALL_ONLY=1), no
# ceilings, no timing (test/emu/dev_versions.sh runs them all).
$(EMU)/bf16/dev/%: $(EMU)/bf16/dev/%.cu.o $(EMU_LIB)
	$(CXX) $^ -o $@ $(EMU_LIBS)
$(EMU)/fp32/dev/%: $(EMU)/fp32/dev/%.cu.o $(EMU_LIB)
	$(CXX) $^ -o $@ $(EMU_LIBS)

# The race checker (EMU_RACECHECK, docs/emulation.md): the kernels built with ThreadSanitizer, the
# emulation library without it. `make test` runs a reduced set (test/emu/race_check.sh).
EMU_RACE := $(EMU)/race
EMU_RACE_FLAGS := -Iemu/include $(EMU_BASE_FLAGS) -O1 -fsanitize=thread -include emu/emu.h $(EMU_CXXFLAGS)
$(EMU_RACE)/lib/%.o: emu/%.cpp $(EMU_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(EMU_BASE_FLAGS) -O1 -DEMU_RACECHECK -Iemu/include $(EMU_CXXFLAGS) -c $< -o $@
$(EMU_RACE)/bf16/%.o: $(EMU_SRC)/% $(EMU_HEADERS) | deps-test
	@mkdir -p $(@D) $(dir $(EMU)/deps/race/$*)
	$(CXX) $(EMU_RACE_FLAGS) -MMD -MP -MF $(EMU)/deps/race/$*.d -x c++ -c $< -o $@
$(EMU_RACE)/main.o: test/gpu_main.cpp test/summary_listener.h | deps-test
	@mkdir -p $(@D)
	$(CXX) $(EMU_BASE_FLAGS) -O1 -fsanitize=thread -c $< -o $@
EMU_RACE_LIB := $(patsubst emu/%.cpp,$(EMU_RACE)/lib/%.o,$(EMU_LIB_SOURCES))
$(EMU_RACE)/test_gpu_kernels: $(EMU_RACE)/main.o $(EMU_RACE)/bf16/test/test_gpu_kernels.cu.o $(EMU_RACE)/bf16/test/test_gpu_attention.cu.o $(EMU_RACE_LIB)
	$(CXX) -fsanitize=thread $^ -o $@ $(EMU_LIBS) $(CATCH_LIBS)
$(EMU_RACE)/dev/%: $(EMU_RACE)/bf16/dev/%.cu.o $(EMU_RACE_LIB)
	@mkdir -p $(@D)
	$(CXX) -fsanitize=thread $^ -o $@ $(EMU_LIBS)
# dev/matmul's products run in the emulated cuBLASLt, which has no threads to race: not race-checked.
EMU_RACE_BINS := $(addprefix $(EMU_RACE)/dev/,$(filter-out matmul,$(DEV_BENCHMARKS)))

.PHONY: test-emu
test-emu: $(filter-out %.sh,$(EMU_TESTS)) $(EMU_SCRIPT_DEPS)
	test/run_tests.sh $(EMU_TESTS)

# `make test` runs the emulated suites too (after the GPU tests, which skip without a GPU), wherever
# NVIDIA's headers are: no GPU or driver needed. Not with SANITIZE=1.
EMU_IN_TEST := $(if $(filter 1,$(SANITIZE)),,$(if $(wildcard $(CUDA_INCLUDE)/cuda_runtime_api.h),1))
test: $(if $(EMU_IN_TEST),$(filter-out %.sh,$(EMU_TESTS)) $(EMU_SCRIPT_DEPS))
test: GPU_TESTS += $(if $(EMU_IN_TEST),$(EMU_TESTS))
