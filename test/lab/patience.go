package lab

import (
	"os"
	"strconv"
	"time"
)

// EnvPatience multiplies the harness's waits (a daemon starting, exiting,
// logging). The kernel matrix sets it: its VMs emulate the CPU and share
// the host's cores with each other, and a daemon that enforces within 2 s
// on a host can take 25 s there while another VM verifies programs.
// Limits a test asserts on (a filter back within 10 s) are not scaled.
const EnvPatience = "IMDSGUARD_TEST_PATIENCE"

// Patience is d times the factor EnvPatience holds (1 when it is unset or
// not a whole number from 1 to 20).
func Patience(d time.Duration) time.Duration {
	n, err := strconv.Atoi(os.Getenv(EnvPatience))
	if err != nil || n < 1 || n > 20 {
		return d
	}
	return d * time.Duration(n)
}
