package loader

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// abiVersion is part of the layout: bump it when the meaning of a map's
// contents changes without its shape changing (a flag bit reused, a counter
// slot moved), so a daemon never shares maps with programs that read them
// differently.
const abiVersion = 1

// sharedMaps are the maps pinned and shared across daemons: every map of
// the object but the internal data sections, which belong to one load.
func sharedMaps(spec *ebpf.CollectionSpec) []string {
	var names []string
	for name := range spec.Maps {
		if !strings.HasPrefix(name, ".") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// layoutOf hashes what two daemons must agree on to share maps: each map's
// type, sizes, flags and the member layout of its key and value types.
func layoutOf(spec *ebpf.CollectionSpec) string {
	h := sha256.New()
	fmt.Fprintf(h, "abi %d\n", abiVersion)
	for _, name := range sharedMaps(spec) {
		m := spec.Maps[name]
		fmt.Fprintf(h, "%s %s %d %d %d %#x %s %s\n", name, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.Flags,
			typeShape(m.Key, 0), typeShape(m.Value, 0))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// typeShape renders a BTF type's member names, offsets and sizes.
func typeShape(t btf.Type, depth int) string {
	if t == nil || depth > 8 {
		return "?"
	}
	t = btf.UnderlyingType(t)
	switch v := t.(type) {
	case *btf.Struct:
		return compositeShape("struct", v.Size, v.Members, depth)
	case *btf.Union:
		return compositeShape("union", v.Size, v.Members, depth)
	case *btf.Array:
		return fmt.Sprintf("[%d]%s", v.Nelems, typeShape(v.Type, depth+1))
	case *btf.Int:
		return fmt.Sprintf("int%d", v.Size*8)
	case *btf.Enum:
		return fmt.Sprintf("enum%d", v.Size*8)
	case *btf.Pointer:
		return "ptr"
	default:
		return fmt.Sprintf("%T", t)
	}
}

func compositeShape(kind string, size uint32, members []btf.Member, depth int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s%d{", kind, size)
	for _, m := range members {
		fmt.Fprintf(&b, "%s@%d:%s;", m.Name, m.Offset, typeShape(m.Type, depth+1))
	}
	b.WriteString("}")
	return b.String()
}
