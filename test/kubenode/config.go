package kubenode

import (
	"fmt"
	"os"
	"path/filepath"
)

// PodSubnet is the CNI bridge's range in the node namespace: pods get an
// address from it and route through the node (cni0, .1) to the lab's IMDS.
const PodSubnet = "10.98.0.0/24"

// containerdConfig is a containerd 1.6 configuration whose every path is
// under dir: the node shares nothing with a containerd the machine may run.
// The cgroupfs driver is the kubelet's default with containerd; the native
// snapshotter works on any file system (overlay on overlay does not).
func containerdConfig(dir string) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[9]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), socketPath(dir), filepath.Join(dir, "ttrpc.sock"),
		filepath.Join(dir, "opt"), ImageName, cniBinDir, filepath.Join(dir, "cni"), filepath.Join(dir, "runc"))
}

func socketPath(dir string) string { return filepath.Join(dir, "containerd.sock") }

// cniBinDir is where Debian's containernetworking-plugins puts them.
const cniBinDir = "/usr/lib/cni"

// cniConfig is the bridge + host-local network every non-host pod joins.
// No masquerade: the lab's IMDS namespace routes the pod range back to the
// node, and the guard must see the pod's own source address.
func cniConfig(dir string) string {
	return fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "lab", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}},
  {"type": "loopback"}
]}
`, PodSubnet, filepath.Join(dir, "ipam"))
}

// writeConfigs writes containerd's and the CNI's configuration into dir.
func writeConfigs(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "cni"), 0o755); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(containerdConfig(dir)), 0o644); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cni", "10-lab.conflist"), []byte(cniConfig(dir)), 0o644); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	return nil
}
