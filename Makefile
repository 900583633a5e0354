# branchfs - one non-recursive Makefile.
#
#   make                 build ./branchfs
#   make test            every test (unit, mount, postgres); prints "N passed, N failed"
#   make check           cmocka unit tests only (no FUSE, no postgres)
#   make check-e2e       mount tests (needs /dev/fuse, root)
#   make check-pg        PostgreSQL tests (needs /dev/fuse, root, postgres 15)
#   make bench           benchmarks against a plain directory (scripts/bench.sh)
#   make SANITIZE=address ...   build with AddressSanitizer
#   make DEVELOPER=1 ...        warnings are errors

CC      ?= cc
PKGS    := fuse3 rocksdb libzstd libxxhash
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Wshadow -Wno-unused-parameter \
           -Wstrict-prototypes -Wmissing-prototypes -Wno-format-truncation -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
           -pthread -I.
LDLIBS_KV   := $(shell pkg-config --libs rocksdb libzstd libxxhash 2>/dev/null || echo -lrocksdb -lzstd -lxxhash) -lpthread
LDLIBS_FUSE := $(shell pkg-config --libs fuse3 2>/dev/null || echo -lfuse3)
CFLAGS_FUSE := $(shell pkg-config --cflags fuse3 2>/dev/null)

# The branchfs binary links RocksDB statically when the static library is
# there (Debian's librocksdb-dev ships it): resolving the shared library's C++
# symbols doubled the start-up time of every CLI command (~4 ms -> ~2 ms).
ROCKSDB_A := $(shell $(CC) -print-file-name=librocksdb.a)
ifneq ($(ROCKSDB_A),librocksdb.a)
LDLIBS_BIN_KV := $(ROCKSDB_A) -lgflags -lsnappy -llz4 -lzstd -lbz2 -lz -lxxhash \
                 -lstdc++ -lm -ldl -lpthread
else
LDLIBS_BIN_KV := $(LDLIBS_KV)
endif

ifeq ($(DEVELOPER),1)
CFLAGS  += -Werror
endif
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
LDFLAGS += -fsanitize=$(SANITIZE)
endif

# Sanitizer builds get their own object directory so they never mix.
B := build$(if $(SANITIZE),-$(SANITIZE))
KV_SRC    := $(wildcard kv/*.c)
SNAP_SRC  := $(wildcard snap/*.c)
FS_SRC    := $(wildcard fs/*.c)
TOOLS_SRC := $(wildcard tools/*.c)
KV_OBJ    := $(KV_SRC:%.c=$(B)/%.o)
SNAP_OBJ  := $(SNAP_SRC:%.c=$(B)/%.o)
FS_OBJ    := $(FS_SRC:%.c=$(B)/%.o)
TOOLS_OBJ := $(TOOLS_SRC:%.c=$(B)/%.o)
UNIT_SRC  := $(wildcard tests/kv/*.c tests/snap/*.c tests/fs/*.c)
UNIT_BIN  := $(UNIT_SRC:%.c=$(B)/%)

all: branchfs

$(B)/fs/%.o: fs/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CFLAGS_FUSE) -MMD -MP -c $< -o $@
$(B)/tools/%.o: tools/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CFLAGS_FUSE) -MMD -MP -c $< -o $@
$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/libkv.a: $(KV_OBJ)
	$(AR) rcs $@ $^
$(B)/libsnap.a: $(SNAP_OBJ)
	$(AR) rcs $@ $^
$(B)/libfs.a: $(FS_OBJ)
	$(AR) rcs $@ $^

branchfs: $(TOOLS_OBJ) $(B)/libfs.a $(B)/libsnap.a $(B)/libkv.a
	$(CC) $(LDFLAGS) -o $@ $(TOOLS_OBJ) $(B)/libfs.a $(B)/libsnap.a $(B)/libkv.a \
		$(LDLIBS_FUSE) $(LDLIBS_BIN_KV)

# Unit tests link the layer libraries without FUSE (tests/fs links libfs).
$(B)/tests/kv/%: tests/kv/%.c $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(B)/libkv.a $(LDLIBS_KV) -lcmocka
$(B)/tests/snap/%: tests/snap/%.c tests/snap/snap_env.h $(B)/libsnap.a $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(B)/libsnap.a $(B)/libkv.a $(LDLIBS_KV) -lcmocka
$(B)/tests/fs/%: tests/fs/%.c $(B)/libfs.a $(B)/libsnap.a $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CFLAGS_FUSE) $(LDFLAGS) -o $@ $< $(B)/libfs.a $(B)/libsnap.a $(B)/libkv.a \
		$(LDLIBS_FUSE) $(LDLIBS_KV) -lcmocka

unit: $(UNIT_BIN)

test: branchfs unit
	BFS_BUILD=$(B) tests/run.sh all
check: unit
	BFS_BUILD=$(B) tests/run.sh unit
check-e2e: branchfs
	BFS_BUILD=$(B) tests/run.sh e2e
check-pg: branchfs
	BFS_BUILD=$(B) tests/run.sh pg
bench: branchfs
	scripts/bench.sh
	scripts/bench-branch.sh

# ---- end-to-end test programs (tests/e2e/*.c) ------------------------------
# C helpers that tests/e2e/*.sh run against a mounted branch.  They link
# cmocka only (no branchfs library) and are not unit tests: `make unit` and
# `tests/run.sh unit` leave them alone; `make test` and `make check-e2e`
# build them before running the mount tests.
E2E_SRC := $(wildcard tests/e2e/*.c)
E2E_BIN := $(E2E_SRC:%.c=$(B)/%)
$(B)/tests/e2e/%: tests/e2e/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< -lcmocka
# bfs_damage writes damage straight into a store (corruption.sh): it links
# the libraries, not cmocka.
$(B)/tests/e2e/bfs_damage: tests/e2e/bfs_damage.c $(B)/libsnap.a $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(B)/libsnap.a $(B)/libkv.a $(LDLIBS_KV)
e2e-progs: $(E2E_BIN)
test check-e2e: $(E2E_BIN)
.PHONY: e2e-progs
# ---- end of end-to-end test programs ------------------------------------------

# ---- test tools (tests/tools/) ------------------------------------------------
# The power-cut simulation of tests/pg/pg_powercut.sh: powercut.so, an
# LD_PRELOAD shim for the daemon that journals syncs and directory changes
# under the store, and powercut, which rolls the store back from that
# journal.  Test-only.  The shim is built without _FILE_OFFSET_BITS (it
# defines open and open64 itself) and without sanitizers.
PC_BIN := $(B)/tests/tools/powercut $(B)/tests/tools/powercut.so
$(B)/tests/tools/powercut: tests/tools/powercut.c tests/tools/powercut_journal.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $<
$(B)/tests/tools/powercut.so: tests/tools/powercut_shim.c tests/tools/powercut_journal.h
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -fsanitize=%,$(CFLAGS)) -U_FILE_OFFSET_BITS -fPIC -shared \
		-o $@ $< -ldl -lpthread
test-tools: $(PC_BIN)
test check-pg: $(PC_BIN)
.PHONY: test-tools
# ---- end of test tools --------------------------------------------------------

clean:
	rm -rf build build-* branchfs

.PHONY: all unit test check check-e2e check-pg bench clean
-include $(shell find $(B) -name '*.d' 2>/dev/null)
