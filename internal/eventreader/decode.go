package eventreader

import (
	"encoding/binary"
	"fmt"
	"io"
	"unsafe"

	"github.com/imdsguard/imdsguard/bpf"
)

// recordSize is the size of the kernel's struct event, which the generated
// bpf.ImdsguardEvent mirrors byte for byte (structs.HostLayout, padding
// fields included).
const recordSize = int(unsafe.Sizeof(bpf.ImdsguardEvent{}))

// decodeRecord fills raw from a ring buffer record as binary.Read with
// binary.NativeEndian would, without its reflection (which cost more than
// the rest of decoding): fields in declaration order, bytes past the struct
// ignored, a short record an error. TestDecodeRecordMatchesBinaryRead keeps
// it in step with the generated struct.
func decodeRecord(b []byte, raw *bpf.ImdsguardEvent) error {
	if len(b) < recordSize {
		return fmt.Errorf("record of %d bytes, want %d: %w", len(b), recordSize, io.ErrUnexpectedEOF)
	}
	ne := binary.NativeEndian
	raw.TsNs = ne.Uint64(b[0:])
	raw.CgroupId = ne.Uint64(b[8:])
	raw.NetnsCookie = ne.Uint64(b[16:])
	raw.Pid = ne.Uint32(b[24:])
	raw.Ppid = ne.Uint32(b[28:])
	raw.Tid = ne.Uint32(b[32:])
	raw.Pad0 = ne.Uint32(b[36:])
	raw.Uid = ne.Uint32(b[40:])
	raw.Gid = ne.Uint32(b[44:])
	copy(raw.Addr[:], b[48:64])
	raw.Port = ne.Uint16(b[64:])
	raw.Kind, raw.Action, raw.Reason, raw.Flags = b[66], b[67], b[68], b[69]
	raw.PathLen = ne.Uint16(b[70:])
	raw.MethodLen, raw.Gen = b[72], b[73]
	raw.Rule = ne.Uint16(b[74:])
	copy(raw.Pad[:], b[76:78])
	copyInt8s(raw.Comm[:], b[78:94])
	copyInt8s(raw.Method[:], b[94:102])
	copyInt8s(raw.Path[:], b[102:230])
	return nil
}

// copyInt8s copies the kernel's char arrays, which bpf2go types as int8.
func copyInt8s(dst []int8, src []byte) {
	for i := range dst {
		dst[i] = int8(src[i])
	}
}
