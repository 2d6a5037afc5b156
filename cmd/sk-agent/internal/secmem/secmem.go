// Package secmem holds secrets in memory that is locked (never swapped),
// outside the Go heap (the garbage collector never copies it), excluded
// from core dumps, and zeroed before it is unmapped.
package secmem

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrLock means the memory could not be locked (RLIMIT_MEMLOCK, or no
// CAP_IPC_LOCK): the agent refuses to hold a secret in swappable memory.
var ErrLock = errors.New("secmem: cannot lock memory")

// Buffer is one page-aligned locked mapping; Bytes()[:Len()] is the secret.
type Buffer struct {
	mem []byte
	n   int
}

// New maps and locks a buffer of capacity size bytes (rounded up to a page).
func New(size int) (*Buffer, error) {
	if size <= 0 {
		return nil, errors.New("secmem: size must be positive")
	}
	page := os.Getpagesize()
	capacity := (size + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, capacity, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("secmem: mmap: %w", err)
	}
	if err := unix.Mlock(mem); err != nil {
		_ = unix.Munmap(mem)
		return nil, fmt.Errorf("%w: %v", ErrLock, err)
	}
	// Best effort: keep the page out of core dumps and out of a forked child.
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	_ = unix.Madvise(mem, unix.MADV_DONTFORK)
	return &Buffer{mem: mem}, nil
}

// From copies src into a new locked buffer and clears src.
func From(src []byte) (*Buffer, error) {
	defer clear(src)
	b, err := New(len(src))
	if err != nil {
		return nil, err
	}
	b.n = copy(b.mem, src)
	return b, nil
}

// Bytes is the secret; it is valid until Destroy.
func (b *Buffer) Bytes() []byte {
	if b == nil || b.mem == nil {
		return nil
	}
	return b.mem[:b.n]
}

// Len is the length of the secret.
func (b *Buffer) Len() int { return len(b.Bytes()) }

// Destroy zeroes, unlocks and unmaps the buffer. It is idempotent.
func (b *Buffer) Destroy() {
	if b == nil || b.mem == nil {
		return
	}
	clear(b.mem)
	_ = unix.Munlock(b.mem)
	_ = unix.Munmap(b.mem)
	b.mem, b.n = nil, 0
}

// LockAll locks every current and future page of the process (mlockall),
// so that transient copies made by libraries (the RSA unwrap, TLS buffers)
// are never written to swap either. It needs CAP_IPC_LOCK or a large
// enough RLIMIT_MEMLOCK; the agent runs as root.
func LockAll() error {
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE); err != nil {
		return fmt.Errorf("%w: mlockall: %v", ErrLock, err)
	}
	return nil
}
