package cloud

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDMI writes a DMI directory holding files (name -> value, with the
// newline the kernel ends each with).
func fakeDMI(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, v := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDetectNamesTheCloudFromItsDMIStrings(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string
		want  string
		why   string
	}{
		{"aws nitro", map[string]string{"sys_vendor": "Amazon EC2", "product_name": "m6i.large"}, AWS, "sys_vendor"},
		{"aws xen", map[string]string{"sys_vendor": "Xen", "product_version": "4.11.amazon"}, AWS, "product_version"},
		{"aws bare metal board", map[string]string{"sys_vendor": "", "board_vendor": "Amazon EC2"}, AWS, "board_vendor"},
		{"gcp", map[string]string{"sys_vendor": "Google", "product_name": "Google Compute Engine"}, GCP, "sys_vendor"},
		{"azure", map[string]string{"sys_vendor": "Microsoft Corporation", "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77"}, Azure, "chassis_asset_tag"},
		{"hyper-v outside azure", map[string]string{"sys_vendor": "Microsoft Corporation", "chassis_asset_tag": "None"}, Generic, "no cloud"},
		{"oci", map[string]string{"sys_vendor": "QEMU", "chassis_asset_tag": "OracleCloud.com"}, OCI, "chassis_asset_tag"},
		{"alibaba", map[string]string{"sys_vendor": "Alibaba Cloud", "product_name": "Alibaba Cloud ECS"}, Alibaba, "sys_vendor"},
		{"openstack", map[string]string{"sys_vendor": "OpenStack Foundation", "product_name": "OpenStack Nova"}, OpenStack, "sys_vendor"},
		{"laptop", map[string]string{"sys_vendor": "LENOVO", "product_name": "20XW"}, Generic, `sys_vendor="LENOVO"`},
		{"no dmi at all", nil, Generic, "no DMI strings"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := Detect(fakeDMI(t, c.files))
			if err != nil {
				t.Fatal(err)
			}
			if d.Cloud != c.want || !strings.Contains(d.Why, c.why) {
				t.Errorf("Detect = %+v, want cloud %s with a reason naming %q", d, c.want, c.why)
			}
		})
	}
}

func TestDetectWithoutADMIDirectoryFallsBack(t *testing.T) {
	d, err := Detect(filepath.Join(t.TempDir(), "absent"))
	if err != nil || d.Cloud != Generic {
		t.Fatalf("Detect(absent dir) = %+v, %v; want %s", d, err, Generic)
	}
}

func TestDetectReportsAnUnreadableDMIString(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "sys_vendor"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Detect(dir); err == nil || !strings.Contains(err.Error(), "sys_vendor") {
		t.Fatalf("Detect with a directory as sys_vendor: %v, want an error naming it", err)
	}
}

func TestEveryProfileIsWellFormed(t *testing.T) {
	for _, p := range All() {
		if len(p.Endpoints) == 0 || len(p.CredentialPaths) == 0 || p.Sources == "" {
			t.Errorf("%s: endpoints, credential paths and sources are all required: %+v", p.Name, p)
		}
		for _, e := range p.Endpoints {
			if _, err := netip.ParseAddrPort(e); err != nil {
				t.Errorf("%s: endpoint %q: %v", p.Name, e, err)
			}
		}
		for _, cp := range append(append([]string{}, p.CredentialPaths...), p.LegacyPaths...) {
			if !strings.HasPrefix(cp, "/") || strings.Count(cp, "/") < 2 {
				t.Errorf("%s: path %q needs a first segment and more", p.Name, cp)
			}
		}
		if pr := p.Proof; pr != nil {
			if pr.Header == "" || pr.Header != strings.ToLower(pr.Header) || pr.TTLHeader != strings.ToLower(pr.TTLHeader) {
				t.Errorf("%s: proof headers must be set and lower case: %+v", p.Name, pr)
			}
			if (pr.TokenPath == "") != (pr.TTLHeader == "") || (pr.TokenPath != "" && pr.MaxTTL <= 0) {
				t.Errorf("%s: a token flow needs its path, TTL header and largest TTL: %+v", p.Name, pr)
			}
		}
	}
}

func TestLookupKnowsEveryNameButAuto(t *testing.T) {
	for _, n := range Names() {
		_, ok := Lookup(n)
		if ok == (n == Auto) {
			t.Errorf("Lookup(%q) = %v", n, ok)
		}
		if !Known(n) {
			t.Errorf("Known(%q) = false", n)
		}
	}
	if Known("AWS") || Known("azure-stack") {
		t.Error("Known accepts a name that is not a profile's (names are lower case)")
	}
	a, _ := Lookup(AWS)
	a.Endpoints[0] = "changed"
	if b, _ := Lookup(AWS); b.Endpoints[0] == "changed" {
		t.Error("a caller's change to a profile reached the table")
	}
}
