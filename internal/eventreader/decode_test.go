package eventreader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/imdsguard/imdsguard/bpf"
)

// The offsets in decodeRecord are those of the generated struct: every
// field of a random record decodes as binary.Read decodes it.
func TestDecodeRecordMatchesBinaryRead(t *testing.T) {
	if n := binary.Size(bpf.ImdsguardEvent{}); n != recordSize {
		t.Fatalf("binary.Size = %d, recordSize = %d", n, recordSize)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 1000 {
		b := make([]byte, recordSize+i%9) // ring buffer records may be longer
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		var want, got bpf.ImdsguardEvent
		if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &want); err != nil {
			t.Fatal(err)
		}
		if err := decodeRecord(b, &got); err != nil {
			t.Fatal(err)
		}
		if !sameEvent(&got, &want) {
			t.Fatalf("record %x:\ndecodeRecord %+v\nbinary.Read  %+v", b, got, want)
		}
	}
}

// sameEvent compares every byte of the two structs: == would skip the
// blank padding fields, which binary.Read leaves alone too, but a field
// added to the generated struct and forgotten in decodeRecord would show.
func sameEvent(a, b *bpf.ImdsguardEvent) bool {
	ab := unsafe.Slice((*byte)(unsafe.Pointer(a)), recordSize)
	bb := unsafe.Slice((*byte)(unsafe.Pointer(b)), recordSize)
	return bytes.Equal(ab, bb)
}

func TestDecodeRecordShort(t *testing.T) {
	var raw bpf.ImdsguardEvent
	for _, n := range []int{0, 1, recordSize - 1} {
		err := decodeRecord(make([]byte, n), &raw)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("decodeRecord(%d bytes) = %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
}
