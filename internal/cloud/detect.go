package cloud

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DMIDir is where the kernel shows the firmware's DMI (SMBIOS) strings.
// Every cloud here writes its name into them, and reading them needs no
// network: detection cannot be fooled by, or wait on, a metadata server.
const DMIDir = "/sys/class/dmi/id"

// Detection is what Detect found, and why.
type Detection struct {
	Cloud string // a profile name; Generic when nothing matched
	Why   string // the DMI value that decided, or why none did
}

// sign is one DMI value that identifies a cloud.
type sign struct {
	file  string // under DMIDir
	value string // lower case; matched as a prefix or, with contains, anywhere
	cloud string
	// contains matches anywhere in the value: Xen-era EC2 instances say
	// "4.11.amazon" in product_version, not at its start.
	contains bool
}

// dmiSigns are checked in order; the first match wins. Azure's asset tag and
// OCI's are specific to them; the vendor strings come after, so a VM of
// Microsoft's Hyper-V outside Azure (same sys_vendor) is not taken for
// Azure unless its asset tag says so.
func dmiSigns() []sign {
	return []sign{
		{file: "chassis_asset_tag", value: "7783-7084-3265-9085-8269-3286-77", cloud: Azure},
		{file: "chassis_asset_tag", value: "oraclecloud.com", cloud: OCI},
		{file: "sys_vendor", value: "amazon ec2", cloud: AWS},
		{file: "board_vendor", value: "amazon ec2", cloud: AWS},
		{file: "product_version", value: "amazon", cloud: AWS, contains: true},
		{file: "sys_vendor", value: "google", cloud: GCP},
		{file: "product_name", value: "google compute engine", cloud: GCP},
		{file: "sys_vendor", value: "alibaba cloud", cloud: Alibaba},
		{file: "product_name", value: "alibaba cloud ecs", cloud: Alibaba},
		{file: "sys_vendor", value: "openstack", cloud: OpenStack},
		{file: "product_name", value: "openstack nova", cloud: OpenStack},
	}
}

// Detect names the cloud whose DMI strings dir holds (DMIDir on a real
// node; tests hand in a directory of their own). A missing directory or
// file is no error: the result is Generic, and Why says what was missing.
func Detect(dir string) (Detection, error) {
	signs := dmiSigns()
	values := map[string]string{}
	for _, s := range signs {
		if _, ok := values[s.file]; ok {
			continue
		}
		v, err := readDMI(dir, s.file)
		if err != nil {
			return Detection{}, err
		}
		values[s.file] = v
	}
	for _, s := range signs {
		v := strings.ToLower(values[s.file])
		if strings.HasPrefix(v, s.value) || (s.contains && strings.Contains(v, s.value)) {
			return Detection{Cloud: s.cloud, Why: fmt.Sprintf("%s is %q", filepath.Join(dir, s.file), values[s.file])}, nil
		}
	}
	return Detection{Cloud: Generic, Why: noMatch(dir, values)}, nil
}

// readDMI returns a DMI value without its newline, or "" when the file does
// not exist (not every firmware fills every string).
func readDMI(dir, file string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading dmi %s: %w", file, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func noMatch(dir string, values map[string]string) string {
	var seen []string
	for _, f := range []string{"sys_vendor", "product_name", "board_vendor", "chassis_asset_tag"} {
		if values[f] != "" {
			seen = append(seen, fmt.Sprintf("%s=%q", f, values[f]))
		}
	}
	if len(seen) == 0 {
		return fmt.Sprintf("no DMI strings in %s", dir)
	}
	return "no cloud's DMI signs in " + dir + " (" + strings.Join(seen, ", ") + ")"
}
