# Throughput against concurrency, from the files emqx_redis_bench writes.
# gnuplot -e "dir='bench/results'" bench/throughput.gp
if (!exists("dir")) dir = 'bench/results'
load dir.'/ceilings.gp'

set terminal pngcairo size 1280,760 font ",11" noenhanced
set output dir.'/throughput.png'
set title "emqx_redis_storage: throughput against concurrency (closed loop, one run)"
set xlabel "Erlang processes"
set ylabel "operations/s (messages/s for batch ops)"
set logscale xy
set format y "%.0s%c"
set xrange [0.7:400]
set xtics (1, 4, 16, 64, 256)
set grid xtics ytics mytics
set key outside right top
# Ten distinct colours that stay readable on white.
colours = "#1f77b4 #d62728 #2ca02c #9467bd #ff7f0e #8c564b #e377c2 #17becf #bcbd22 #000000"
do for [i=1:10] { set linetype i lc rgb word(colours, i) }
set style line 100 lc rgb "#888888" dt 2 lw 1.5

plot for [i=0:*] dir.'/throughput.dat' index i using 1:2 with linespoints lw 2 pt (i % 7) + 4 ps 1.2 \
         title columnheader(1), \
     set1 with lines ls 100 dt 3 title "redis-benchmark SET, 1 client", \
     set64 with lines ls 100 dt 2 title "redis-benchmark SET, 64 clients", \
     set64p16 with lines ls 100 dt 1 title "redis-benchmark SET, 64 clients -P 16"
