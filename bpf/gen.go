// Package bpf holds imdsguard's eBPF programs and the Go bindings bpf2go
// generates for them. The generated imdsguard_bpfel.go and imdsguard_bpfel.o
// are committed, so building the daemon needs no clang; `make generate`
// rebuilds them and CI checks they are current.
package bpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type event -type endpoint_key -type endpoint_value -type config -type action -type reason -type kind -type mode -type config_flag -type event_flag -type counter_extra -type rule_flag -type limit -type profile Imdsguard imdsguard.c -- -I./include
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel SockoptAll sockopt_all.c -- -I./include
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type judge_run -type req_result -type parser -type uplink_pkt -type judge_limit -type req_flag JudgeTest judge_test.c -- -I./include
