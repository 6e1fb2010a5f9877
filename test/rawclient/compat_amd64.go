package main

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func int80(nr, a1, a2, a3, a4, a5 uintptr) (ret uintptr)

// ia32SetsockoptNr is setsockopt in the i386 system call table.
const ia32SetsockoptNr = 366

// errNoCompat says the kernel takes no 32-bit system calls (no
// CONFIG_IA32_EMULATION): int 0x80 would kill the process.
var errNoCompat = errors.New("compat syscalls unavailable: the kernel has no IA32 emulation (/proc/sys/abi/vsyscall32 is missing)")

// compatSetsockoptInt is setsockopt(fd, level, opt, &v, 4) made as a
// 32-bit program makes it. The kernel skips cgroup setsockopt programs for
// such calls; only a guard on the LSM hook sees them. The option's value
// must lie below 4 GiB, where a 32-bit pointer reaches.
func compatSetsockoptInt(fd, level, opt, v int) error {
	if _, err := os.Stat("/proc/sys/abi/vsyscall32"); err != nil {
		return errNoCompat
	}
	mem, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_32BIT)
	if err != nil {
		return fmt.Errorf("mapping memory below 4 GiB: %v", err)
	}
	defer unix.Munmap(mem)
	mem[0], mem[1], mem[2], mem[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	addr := uintptr(unsafe.Pointer(&mem[0]))
	r := int32(int80(ia32SetsockoptNr, uintptr(fd), uintptr(level), uintptr(opt), addr, 4))
	if r < 0 {
		return unix.Errno(-r)
	}
	return nil
}
