//go:build !amd64

package main

import "errors"

var errNoCompat = errors.New("compat syscalls unavailable: 32-bit x86 system calls exist on amd64 only")

func compatSetsockoptInt(fd, level, opt, v int) error { return errNoCompat }
