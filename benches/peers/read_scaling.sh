#!/usr/bin/env bash
# How reads of hot keys scale with threads: runs only the throughput bench's
# hot_prompts paired rounds (100 prompts of 2 KB, Zipf(1.0) reads, every one
# cached) at 1, 2, 4, 8 and 16 threads, or at the comma-separated thread
# counts given as the first argument, e.g. `read_scaling.sh 1,4,32`.
#
# It prints two markdown tables: each reader's median reads per second (all
# threads together) with its scaling over the fewest threads measured, and,
# per thread count, swr-cache's get_with and get over quick_cache's get and
# over frozen_borrow (a HashMap never written, read by reference: the limit),
# with swr-cache's refresher running and not started.
#
# Meant for a machine with many cores, at least as many as the most threads
# asked for: on fewer, the threads take turns and the figures say nothing of
# scaling. Criterion is skipped (SWR_BENCH_PAIRED_ONLY=1), so it takes a
# minute or so after the build.
set -euo pipefail

threads="${1:-1,2,4,8,16}"
if [[ ! "$threads" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]]; then
    echo "usage: $0 [THREADS,...]   (e.g. 1,2,4,8,16)" >&2
    exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
echo "hot_prompts read scaling at $threads threads, on $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo "?") cores" >&2
SWR_BENCH_PAIRED_ONLY=1 SWR_BENCH_THREADS="$threads" \
    cargo bench -p swr-cache-peers --bench throughput -- hot_prompts
