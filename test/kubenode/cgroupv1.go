package kubenode

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// removeV1Trees removes the lab's cgroup (rel, the path under each
// hierarchy's root) from every cgroup v1 hierarchy, deepest first: runc
// made the pods' there on a hybrid host, and they outlive the containers.
// The node's processes are gone by then; a directory still busy after a
// few seconds is an error.
func removeV1Trees(rel string) error {
	mounts, err := v1Mounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if err := removeTree(filepath.Join(m, rel)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// v1Mounts lists the mount points of cgroup v1 hierarchies.
func v1Mounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("cgroup v1 mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent dev root mountpoint options... - fstype source super
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(pre)
		if ok && len(fields) >= 5 && strings.HasPrefix(post, "cgroup ") {
			out = append(out, fields[4])
		}
	}
	return out, sc.Err()
}

func removeTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("cgroup v1 tree %s: %w", dir, err)
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		if err := rmdirRetry(d); err != nil {
			return err
		}
	}
	return nil
}

// rmdirRetry retries while the kernel still tears the last tasks down.
func rmdirRetry(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
