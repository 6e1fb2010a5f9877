package kubenode

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// ImageName is the one image the node has: busybox and the test clients.
// It is also the sandbox ("pause") image, whose entrypoint only sleeps,
// because no image can be pulled on these machines.
const ImageName = "imdsguard.test/lab:1"

// imageFile is a file put into the image: its path there and its source.
type imageFile struct{ path, src string }

// writeImage writes an OCI image archive (an image layout in a tar, what
// `ctr images import` reads) holding files, with busybox's applets linked
// in /bin, and returns its path.
func writeImage(dir string, files []imageFile) (string, error) {
	layer, err := layerTar(files)
	if err != nil {
		return "", err
	}
	blobs := map[string][]byte{}
	add := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return d, len(b)
	}
	layerDigest, layerSize := add(layer)
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/bin/sleep", "2147483647"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	configDigest, configSize := add(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize}},
	})
	manifestDigest, manifestSize := add(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"annotations": map[string]string{"io.containerd.image.name": ImageName},
		}},
	})
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	entries := []struct {
		name string
		body []byte
	}{{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {"index.json", index}}
	for d, b := range blobs {
		entries = append(entries, struct {
			name string
			body []byte
		}{"blobs/sha256/" + d[len("sha256:"):], b})
	}
	for _, e := range entries {
		if err := writeTarFile(tw, e.name, e.body, 0o644); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("image archive: %w", err)
	}
	path := filepath.Join(dir, "image.tar")
	return path, os.WriteFile(path, out.Bytes(), 0o644)
}

// layerTar is the image's one layer: the files, and /bin/sh, sleep, cat
// as links to busybox.
func layerTar(files []imageFile) ([]byte, error) {
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for _, d := range []string{"bin", "tmp", "proc", "sys", "dev", "etc"} {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, fmt.Errorf("image layer: %w", err)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f.src)
		if err != nil {
			return nil, fmt.Errorf("image layer: %w", err)
		}
		if err := writeTarFile(tw, f.path, b, 0o755); err != nil {
			return nil, err
		}
	}
	for _, applet := range []string{"sh", "sleep", "cat"} {
		h := &tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("image layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("image layer: %w", err)
	}
	return out.Bytes(), nil
}

func writeTarFile(tw *tar.Writer, name string, body []byte, mode int64) error {
	h := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body)), ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("image file %s: %w", name, err)
	}
	if _, err := tw.Write(body); err != nil {
		return fmt.Errorf("image file %s: %w", name, err)
	}
	return nil
}
