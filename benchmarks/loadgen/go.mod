module nbstream/benchmarks/loadgen

go 1.22
