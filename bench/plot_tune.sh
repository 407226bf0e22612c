#!/usr/bin/env bash
# Plots a `yk tune --csv` file with gnuplot (Debian: gnuplot-nox):
#   <out>/<name>-speedup.png    the winner's speed-up over the default, per shape, for each op (each
#                               kernel of an op that launches several: attention_backward:part=dkdv)
#   <out>/<name>-attention.png  prefill TFLOP/s against sequence length, decode GB/s against
#                               context length per batch: the winner's and the default's
# usage: bench/plot_tune.sh TUNE.csv [OUT_DIR=bench/results] [NAME=tune] [GPU=the first in the file]
set -euo pipefail

csv=${1:?usage: bench/plot_tune.sh TUNE.csv [OUT_DIR] [NAME] [GPU]}
out=${2:-$(dirname "$0")/results}
name=${3:-tune}
gpu=${4:-}
command -v gnuplot > /dev/null || { echo "plot_tune.sh: gnuplot is not installed (apt-get install gnuplot-nox)" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Splits each CSV row (RFC 4180 quotes, as yk tune writes them) into named columns for the rows of
# one GPU, and writes gnuplot's data files: one block per series, two blank lines apart.
awk -v work="$work" -v want_gpu="$gpu" '
function split_csv(line, f,    n, i, c, q, field) {
  n = 0; field = ""; q = 0
  for (i = 1; i <= length(line); i++) {
    c = substr(line, i, 1)
    if (q) {
      if (c == "\"" && substr(line, i + 1, 1) == "\"") { field = field "\""; i++ }
      else if (c == "\"") q = 0
      else field = field c
    } else if (c == "\"") q = 1
    else if (c == ",") { f[++n] = field; field = "" }
    else field = field c
  }
  f[++n] = field
  return n
}
function number_after(text, letter,    s) { # "B32 L4096 ..." -> 32 for "B"
  if (!match(text, letter "[0-9]+")) return 0
  return substr(text, RSTART + 1, RLENGTH - 1) + 0
}
NR == 1 { for (i = split_csv($0, h); i > 0; i--) col[h[i]] = i; next }
{
  split_csv($0, f)
  if (want_gpu == "") want_gpu = f[col["gpu"]]
  if (f[col["gpu"]] != want_gpu || f[col["status"]] != "ok") next
  op = f[col["op"]]; shape = f[col["shape"]]; key = op SUBSEP shape
  # a call of several kernels (the backward): a series a kernel, "attention_backward:part=dkdv"
  kernel = "kernel" in col ? f[col["kernel"]] : ""; series = op
  if (index(kernel, " ")) { sel = substr(kernel, index(kernel, " ") + 1); gsub(/ /, ",", sel); series = op ":" sel }
  if (f[col["best"]] == 1) { speedup[series, f[col["size"]] + 0] = f[col["speedup"]]; ops[series] = 1 }
  rate = op == "attention_prefill" ? f[col["tflops"]] : f[col["gbps"]]
  if (f[col["best"]] == 1) best[key] = rate
  if (f[col["default"]] == 1) dflt[key] = rate
  if (op == "attention_prefill") prefill[number_after(shape, "S")] = key
  if (op == "attention_decode") { b = number_after(shape, "B"); decode[b, number_after(shape, "L")] = key; batches[b] = 1 }
}
END {
  print want_gpu > (work "/gpu")
  n = 0
  for (op in ops) {
    printf "%s%s", n++ ? " " : "", op > (work "/ops")
    for (k in speedup) { split(k, p, SUBSEP); if (p[1] == op) print p[2], speedup[k] | ("sort -n > " work "/speedup-" op) }
  }
  for (s in prefill) print s, best[prefill[s]] + 0, dflt[prefill[s]] + 0 | ("sort -n > " work "/prefill")
  for (k in decode) { split(k, p, SUBSEP); print p[2], best[decode[k]] + 0, dflt[decode[k]] + 0 | ("sort -n > " work "/decode-" p[1]) }
  for (b in batches) printf "%s ", b > (work "/batches")
}' "$csv"

[ -s "$work/ops" ] || { echo "plot_tune.sh: no checked winners in $csv" >&2; exit 1; }
title=$(cat "$work/gpu")
gnuplot <<EOF
set terminal pngcairo size 1000,560 font "sans,10"
set datafile separator " "
set grid
set key outside right
set logscale x 2
set format x "2^{%L}"
set output "$out/$name-speedup.png"
set title "yk tune on $title: the tuned configuration against the default" noenhanced
set xlabel "problem size (rows, tokens, batch x sequence)"
set ylabel "speed-up over the default"
set yrange [0.9:*]
ops = "$(cat "$work/ops")"
plot for [op in ops] "$work/speedup-".op using 1:2 with linespoints lw 2 title op noenhanced, 1 with lines dt 2 lc "gray" notitle
EOF

have_prefill=$([ -s "$work/prefill" ] && echo 1 || echo 0)
batches=$(cat "$work/batches" 2> /dev/null || true)
if [ "$have_prefill" = 1 ] || [ -n "$batches" ]; then
  gnuplot <<EOF
set terminal pngcairo size 1200,500 font "sans,10"
set output "$out/$name-attention.png"
set multiplot layout 1,2 title "yk tune on $title: attention, tuned and default"
set grid
set logscale x 2
set key top left
if ($have_prefill) {
  set title "prefill (causal, batch 1)"; set xlabel "sequence length"; set ylabel "TFLOP/s"
  plot "$work/prefill" using 1:2 with linespoints lw 2 title "tuned", "" using 1:3 with linespoints dt 2 title "default"
} else { set multiplot next }
batches = "$batches"
if (strlen(batches) > 0) {
  set title "decode"; set xlabel "context length"; set ylabel "GB/s of K and V"
  plot for [b in batches] "$work/decode-".b using 1:2 with linespoints lw 2 title "tuned, batch ".b, \
       for [b in batches] "$work/decode-".b using 1:3 with linespoints dt 2 title "default, batch ".b
}
unset multiplot
EOF
fi
ls "$out/$name"-*.png
