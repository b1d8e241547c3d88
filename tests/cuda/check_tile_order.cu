// Host-side check of the SM90 causal tile order (tile_scheduler.h): section_heads' bounds and tile_in_sequence's
// mapping, which the dense list and the varlen list both walk. Every tile index of a list must name one (head, index
// among the head's tiles), each once, heads of a section side by side per index; a section holds 0 (head-major) or
// 1..heads heads, so sections x tiles_per_head stays within the list. Built and run by tests/test_cuda_layouts.py
// with nvcc, no GPU needed. Prints one line per group of cases, and a `rule` line per case of >= 16 tiles a head
// (L2 bytes, head dim, keys, heads, query heads a K/V head, heads a section) that the test compares with the triton
// backend's copy of the rule; exit status = failures.
#include <cstdio>
#include <vector>

#include <cute/tensor.hpp>

#include "tile_scheduler.h"

namespace {

// Whether the list of tiles_per_head x heads tiles, by sections of `sections` heads, is a bijection onto
// (head, index), ordered head-major (sections 0) or, within a section, index-major.
bool mapping_is_exact(int tiles_per_head, int heads, int sections) {
  std::vector<char> seen(static_cast<size_t>(tiles_per_head) * heads, 0);
  int previous_head = -1, previous_index = -1;
  for (int i = 0; i < tiles_per_head * heads; ++i) {
    const flash::TileInSequence tile = flash::tile_in_sequence(i, tiles_per_head, heads, sections);
    if (tile.head < 0 || tile.head >= heads || tile.index < 0 || tile.index >= tiles_per_head) return false;
    char& mark = seen[static_cast<size_t>(tile.head) * tiles_per_head + tile.index];
    if (mark) return false;
    mark = 1;
    if (sections > 0 && i % (sections * tiles_per_head) != 0) {  // inside a section: index-major, heads ascending
      const bool next = tile.index == previous_index ? tile.head == previous_head + 1 : tile.index == previous_index + 1;
      if (!next) return false;
    }
    previous_head = tile.head;
    previous_index = tile.index;
  }
  return true;
}

}  // namespace

int main() {
  int failures = 0;
  int cases = 0, bad = 0;
  for (long long l2 : {52428800LL, 62914560LL}) {
    for (int head_dim : {64, 128, 256}) {
      for (int seqlen_k : {0, 1, 100, 2048, 4096, 16384, 65536, 1 << 20}) {
        for (int tiles : {1, 15, 16, 17, 64, 128}) {
          for (int group : {1, 4, 7}) {
            for (int groups : {1, 2, 3, 5, 6, 10, 16, 64, 100}) {
              const int heads = groups * group;  // the list's query heads: whole groups (batch x heads_q)
              flash::FwdParams params{};
              params.head_dim = head_dim;
              params.l2_bytes = l2;
              params.group = group;
              const int sections = flash::section_heads(params, seqlen_k, tiles, heads);
              const bool bounded = tiles < flash::kSectionMinTilesPerHead ? sections == 0
                                                                          : sections >= 1 && sections <= heads;
              if (tiles == 128) printf("rule %lld %d %d %d %d %d\n", l2, head_dim, seqlen_k, heads, group, sections);
              ++cases;
              if (!bounded || !mapping_is_exact(tiles, heads, sections)) {
                ++bad;
                printf("  seqlen_k %d, head_dim %d, %d tiles x %d heads (groups of %d): %d heads a section\n",
                       seqlen_k, head_dim, tiles, heads, group, sections);
              }
            }
          }
        }
      }
    }
  }
  printf("section_heads and tile_in_sequence, %d cases: %d failures\n", cases, bad);
  failures += bad;
  // No keys fit every head in one section: a list of 4096 heads x 4096 tiles (2^24) stays one section, no overflow.
  flash::FwdParams params{};
  params.head_dim = 128;
  params.l2_bytes = 52428800LL;
  params.group = 1;
  const int sections = flash::section_heads(params, 0, 4096, 4096);
  bad = sections != 4096 || !mapping_is_exact(4096, 4096, sections);
  printf("no keys, 4096 x 4096 tiles: %d failures\n", bad);
  failures += bad;
  return failures;
}
