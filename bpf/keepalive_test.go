package bpf

import "runtime"

// runtimeKeepAlive keeps a buffer whose address went to the kernel alive
// until the run that reads it is over.
func runtimeKeepAlive(b []byte) { runtime.KeepAlive(b) }
