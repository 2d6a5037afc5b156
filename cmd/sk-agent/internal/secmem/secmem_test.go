package secmem

import (
	"bytes"
	"testing"
)

func TestFromCopiesClearsAndDestroys(t *testing.T) {
	src := []byte("0123456789abcdef0123456789abcdef")
	want := bytes.Clone(src)
	b, err := From(src)
	if err != nil {
		t.Skipf("cannot lock memory here (%v): RLIMIT_MEMLOCK too small for an unprivileged test", err)
	}
	if !bytes.Equal(b.Bytes(), want) || b.Len() != len(want) {
		t.Fatalf("buffer holds %x", b.Bytes())
	}
	if !bytes.Equal(src, make([]byte, len(src))) {
		t.Fatal("source was not cleared")
	}
	mem := b.mem
	b.Destroy()
	b.Destroy() // idempotent
	if b.Bytes() != nil || b.Len() != 0 {
		t.Fatal("destroyed buffer still exposes bytes")
	}
	_ = mem // unmapped: reading it would fault, which is the point
}

func TestNewRefusesZero(t *testing.T) {
	if _, err := New(0); err == nil {
		t.Fatal("size 0 accepted")
	}
}
