#!/usr/bin/env bash
# Kernel matrix: boots Debian's cloud kernels under QEMU and runs the
# privileged test suites inside each, as test binaries built here.
#
#   sudo test/kernels/matrix.sh 6.1 6.12 5.10    (or: sudo make test-kernels KERNELS="6.1 6.12")
#
# For each kernel line it takes the newest linux-image-<line>*-cloud-amd64
# that apt knows (Debian 12 for 6.1 and 6.12, Debian 11 for 5.10; the suites
# are added from the Debian mirror apt already uses), a root made once with
# debootstrap, and boots them with TCG (nested KVM does not work on these
# machines), no network device, and everything in the initramfs.
#
# Lines from MIN_KERNEL up run the full suites (suites.full); older lines
# run suites.refused, which proves the daemon refuses to start there and
# leaves nothing behind. A kernel passes when every suite exits 0 and no
# test was skipped, but for tests of an optional feature that the kernel's
# own config says it lacks (kernel_features): those skip with "kernel
# lacks FEATURE", and a kernel whose config has it must run them.
#
# Environment: KERNEL_CACHE (kernels, root; default /var/cache/imdsguard-kernels),
# KERNEL_OUT (logs; default $KERNEL_CACHE/out), KERNEL_JOBS (VMs at once;
# default 3), VM_CPUS (default 2), VM_MEM (default 3G), VM_TIMEOUT (default 45m),
# KERNEL_SUITES (a suites file to run instead of suites.full, for a quick look).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KERNEL_CACHE:-/var/cache/imdsguard-kernels}
outdir=${KERNEL_OUT:-$cache/out}
jobs=${KERNEL_JOBS:-3}
vm_cpus=${VM_CPUS:-2}
vm_mem=${VM_MEM:-3G}
vm_timeout=${VM_TIMEOUT:-45m}
min_kernel=6.1
root_suite=bookworm
root_packages=iproute2,nftables,util-linux,python3,python3-botocore,curl,kmod,systemd,procps
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

log() { echo "kernels: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (apt, debootstrap, and the suites' own needs): run with sudo"
[ $# -gt 0 ] || set -- 6.1 6.12
for tool in qemu-system-x86_64 debootstrap cpio dpkg-deb apt-get; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install qemu-system-x86 debootstrap cpio)"
done

# The Debian mirror apt is configured with, read from apt itself so that no
# host name is written here.
debian_mirror() {
	apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(LABEL)' 'Identifier: Packages' |
		awk '$2 == "bookworm" && $3 == "Debian" {print $1; exit}'
}

# Adds the suites the kernels come from (bookworm-backports, bullseye) from
# the same mirror, once.
ensure_suites() {
	local mirror list=/etc/apt/sources.list.d/imdsguard-kernels.sources
	mirror=$(debian_mirror)
	[ -n "$mirror" ] || { apt-get update -qq; mirror=$(debian_mirror); }
	[ -n "$mirror" ] || die "no Debian bookworm mirror in apt's sources"
	if [ ! -e "$list" ] || ! grep -q "^URIs: $mirror\$" "$list"; then
		printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
			"$mirror" >"$list"
		apt-get update -qq
	fi
	echo "$mirror"
}

# The newest cloud kernel package of a line ("6.1" does not match 6.12).
kernel_package() {
	local re=${1//./\\.}
	apt-cache pkgnames linux-image- | grep -E "^linux-image-${re}[.-][^ ]*-cloud-amd64\$" | sort -V | tail -n1
}

# Extracts a kernel package into $cache/kernels/<package>; prints that dir.
fetch_kernel() {
	local pkg=$1 dir=$cache/kernels/$1
	if [ ! -e "$dir/.done" ]; then
		rm -rf "$dir" && mkdir -p "$dir"
		(cd "$dir" && apt-get download -q "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
		dpkg-deb -x "$dir"/*.deb "$dir/x" && rm -f "$dir"/*.deb
		touch "$dir/.done"
	fi
	echo "$dir/x"
}

# The guest root, made once per package list; packed as base.cpio.
ensure_root() {
	local mirror=$1 key dir
	key=$(echo "$root_suite $root_packages" | sha256sum | cut -c1-12)
	dir=$cache/root-$key
	if [ ! -e "$dir/base.cpio" ]; then
		log "debootstrap $root_suite ($root_packages)"
		rm -rf "$dir" && mkdir -p "$dir"
		debootstrap --variant=minbase --include="$root_packages" "$root_suite" "$dir/root" "$mirror" >"$dir/debootstrap.log" 2>&1 ||
			die "debootstrap failed: see $dir/debootstrap.log"
		rm -rf "$dir"/root/usr/share/{doc,man,info,locale} "$dir"/root/var/cache/apt/* "$dir"/root/var/lib/apt/lists/*
		(cd "$dir/root" && find . | cpio -o -H newc --quiet >"$dir/base.cpio.tmp") && mv "$dir/base.cpio.tmp" "$dir/base.cpio"
	fi
	echo "$dir/base.cpio"
}

# Test binaries and the programs the tests run, built once for all kernels.
build_payload() {
	local p=$1
	mkdir -p "$p/bins" "$p/src"
	local lists=("$here/suites.full" "$here/suites.refused" ${KERNEL_SUITES:+"$KERNEL_SUITES"})
	for pkg in $(awk '!/^#/ && NF {print $2}' "${lists[@]}" | sort -u); do
		local name
		name=$(awk -v p="$pkg" '$2 == p {print $1; exit}' "${lists[@]}")
		CGO_ENABLED=0 "$GO" test -c -o "$p/bins/$name.test" "./$pkg" || die "go test -c ./$pkg failed"
	done
	# Every program a test runs, as test/testbin finds them by name, built
	# with the shipped build's flags (the Makefile's build target).
	CGO_ENABLED=0 "$GO" build -trimpath -tags grpcnotrace -ldflags "-s -w" -o "$p/bins/" \
		./cmd/imdsguard ./test/labclient ./test/rawclient ./test/sdkclient ./test/systemd/unitexec \
		github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock || die "go build failed"
	# The tests read files of the tree (deploy/, policies) relative to their package.
	git -C "$repo" ls-files -co --exclude-standard -z | (cd "$repo" && cpio -0 -pdm --quiet "$p/src")
}

# The optional features a kernel has, by its config, comma-separated, as
# the tests name them (lab.SkipWithoutKernelFeature).
kernel_features() {
	local config=$1 out=()
	has() { grep -q "^$1=[ym]" "$config"; }
	has CONFIG_NETKIT && out+=(netkit)
	has CONFIG_IPVLAN && out+=(ipvlan)
	has CONFIG_IA32_EMULATION && out+=(compat32)
	has CONFIG_DEBUG_INFO_BTF && has CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS && out+=(fmod_ret)
	local IFS=,
	echo "${out[*]}"
}

# Boots one kernel and collects its results into $outdir/<line>.
run_kernel() {
	local line=$1 kdir=$2 base=$3 payload=$4 suites=$5 expect=$6
	local ver work res
	ver=$(ls "$kdir/lib/modules")
	work=$(mktemp -d)
	res=$outdir/$line
	rm -rf "$res" && mkdir -p "$res"
	mkdir -p "$work/usr/lib/modules"
	cp -a "$kdir/lib/modules/$ver" "$work/usr/lib/modules/"
	install -m 0755 "$here/guest-init" "$work/init"
	cp "$suites" "$work/suites"
	(cd "$payload" && find bins src | cpio -o -H newc --quiet >"$work/payload.cpio")
	(cd "$work" && find init suites usr | cpio -o -H newc --quiet >>"$work/payload.cpio.k")
	cat "$base" "$work/payload.cpio" "$work/payload.cpio.k" >"$work/initrd"
	echo "$ver" >"$res/kernel"
	local features
	features=$(kernel_features "$kdir/boot/config-$ver")
	echo "$features" >"$res/features"
	local start=$SECONDS attempt
	# A boot that dies before /init ran is retried once: multi-threaded
	# TCG now and then breaks the kernel's own text patching at boot (seen:
	# an int3 oops in 6.12's timer code, 2 s in). A failure after /init
	# started is the tests', and stands.
	for attempt in 1 2; do
		timeout "$vm_timeout" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$vm_cpus" -m "$vm_mem" \
			-nographic -nic none -no-reboot -monitor none \
			-kernel "$kdir/boot/vmlinuz-$ver" -initrd "$work/initrd" \
			-append "console=ttyS0 rdinit=/init quiet panic=-1 mitigations=off imdsguard.timeout=30m imdsguard.expect=$expect imdsguard.features=${features:-none}" \
			-serial "file:$res/console.log" -serial "file:$res/results.log" >"$res/qemu.log" 2>&1 || true
		grep -q '^KERNEL ' "$res/results.log" && break
		log "$line: the kernel died before /init ran (attempt $attempt): $(grep -m1 -E 'Oops|panic' "$res/console.log" || echo 'see console.log')"
		cp "$res/console.log" "$res/console.attempt$attempt.log"
	done
	echo $((SECONDS - start)) >"$res/seconds"
	rm -rf "$work"
}

# Prints what each failed or skipped test wrote (with -test.v, Go prints a
# test's messages between its === RUN and its --- FAIL line), the last 40
# lines of each: the --- FAIL line alone says nothing of why.
failed_output() {
	awk '
		{ sub(/\r$/, "") }
		/^=== RUN/ { n = 0 }
		{ buf[n++ % 40] = $0 }
		/^\s*--- (FAIL|SKIP)/ {
			for (i = (n > 40 ? n - 40 : 0); i < n; i++) print buf[i % 40]
			n = 0
		}' "$1"
}

# Prints one line per suite and returns non-zero if the kernel did not pass.
report_kernel() {
	local line=$1 res=$outdir/$1 ok=0
	local ver secs
	ver=$(cat "$res/kernel") secs=$(cat "$res/seconds")
	echo "== kernel $line ($ver): booted and ran in ${secs}s; features: $(cat "$res/features")"
	awk -v line="$line" '
		{ sub(/\r$/, "") }
		/^SUITE .* begin$/ {name = $2; pass[name] = fail[name] = skip[name] = lacks[name] = 0; next}
		/^SUITE .* rc=/ {
			split($3, a, "="); split($4, b, "=")
			printf "   %-12s rc=%-3s pass=%-4d fail=%-3d skip=%-3d lacks=%-2d %ss\n", $2, a[2], pass[$2], fail[$2], skip[$2], lacks[$2], b[2]
			if (a[2] != 0 || skip[$2] > 0) bad = 1
			done[$2] = 1; next
		}
		/^--- PASS/ {pass[name]++} /^--- FAIL/ {fail[name]++}
		# a skip of a feature this kernel lacks (the test said so before
		# its --- SKIP line) is no failure
		/^=== RUN/ {lacking = 0}
		/kernel lacks / {lacking = 1}
		/^--- SKIP/ {if (lacking) lacks[name]++; else skip[name]++; lacking = 0}
		/^MATRIX done/ {finished = 1}
		END {
			if (!finished) { print "   the VM did not finish (timeout or crash): see console.log"; bad = 1 }
			exit bad
		}' "$res/results.log" || ok=1
	if [ $ok != 0 ]; then
		echo "   -- failed, skipped or missing tests on $line:"
		failed_output "$res/results.log" | head -n 200 | sed 's/^/   /' || true
		echo "   -- last lines of the console:"
		tail -n 20 "$res/console.log" | sed 's/^/   /'
	fi
	return $ok
}

cd "$repo"
mkdir -p "$cache" "$outdir"
mirror=$(ensure_suites)
base=$(ensure_root "$mirror")
payload=$(mktemp -d)
trap 'rm -rf "$payload"' EXIT
log "building test binaries"
build_payload "$payload"

declare -A kdirs
for line in "$@"; do
	pkg=$(kernel_package "$line")
	[ -n "$pkg" ] || die "no linux-image-$line*-cloud-amd64 package in apt's sources"
	kdirs[$line]=$(fetch_kernel "$pkg")
	log "$line: $pkg"
done

running=0
for line in "$@"; do
	suites=${KERNEL_SUITES:-$here/suites.full} expect=supported
	if [ "$(printf '%s\n%s\n' "$min_kernel" "$line" | sort -V | head -n1)" != "$min_kernel" ]; then
		suites=$here/suites.refused expect=refused
	fi
	log "$line: booting, $expect ($(basename "$suites"))"
	run_kernel "$line" "${kdirs[$line]}" "$base" "$payload" "$suites" "$expect" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n || true
		running=$((running - 1))
	fi
done
wait

status=0
for line in "$@"; do
	report_kernel "$line" || status=1
done
echo "logs: $outdir"
exit $status
