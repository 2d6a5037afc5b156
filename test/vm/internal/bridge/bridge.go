// Package bridge carries TCP connections over one byte stream: the
// virtio-serial port between a test VM and its host. A virtio-serial port
// is a single stream and its host end is not told when the guest closes
// it, so every connection is framed: open, data and close frames, each
// naming the connection.
//
// Frame: type (1 byte: 'O', 'D', 'C'), connection id (4 bytes, big-endian),
// payload length (4 bytes, big-endian, ≤ MaxPayload), payload.
//
// The guest side (Guest) accepts TCP connections on a loopback listener
// inside the VM and opens one framed connection for each; the host side
// (Host) dials the target (the gateway on the host's 127.0.0.1) for every
// open frame. Either side closing sends a close frame; a failed dial is
// answered with a close frame, so the guest's client sees the connection
// refused as it would without the bridge.
package bridge

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
)

// Frame types.
const (
	frameOpen  = 'O'
	frameData  = 'D'
	frameClose = 'C'
)

// MaxPayload bounds one data frame.
const MaxPayload = 32 << 10

// ErrFrame reports a malformed frame: the stream cannot be resynchronised.
var ErrFrame = errors.New("bridge: malformed frame")

type frame struct {
	kind byte
	id   uint32
	data []byte
}

func readFrame(r io.Reader) (frame, error) {
	var h [9]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return frame{}, err
	}
	f := frame{kind: h[0], id: binary.BigEndian.Uint32(h[1:5])}
	n := binary.BigEndian.Uint32(h[5:9])
	switch {
	case f.kind != frameOpen && f.kind != frameData && f.kind != frameClose:
		return frame{}, fmt.Errorf("%w: type %#x", ErrFrame, f.kind)
	case n > MaxPayload:
		return frame{}, fmt.Errorf("%w: length %d", ErrFrame, n)
	case f.kind != frameData && n != 0:
		return frame{}, fmt.Errorf("%w: %c frame with payload", ErrFrame, f.kind)
	}
	f.data = make([]byte, n)
	if _, err := io.ReadFull(r, f.data); err != nil {
		return frame{}, err
	}
	return f, nil
}

// mux is one end of the stream: the connections it carries by id.
type mux struct {
	log   *slog.Logger
	wmu   sync.Mutex
	w     io.Writer
	mu    sync.Mutex
	conns map[uint32]net.Conn
}

func newMux(w io.Writer, log *slog.Logger) *mux {
	return &mux{w: w, log: log, conns: map[uint32]net.Conn{}}
}

func (m *mux) send(kind byte, id uint32, data []byte) error {
	var h [9]byte
	h[0] = kind
	binary.BigEndian.PutUint32(h[1:5], id)
	binary.BigEndian.PutUint32(h[5:9], uint32(len(data)))
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if _, err := m.w.Write(h[:]); err != nil {
		return err
	}
	if len(data) > 0 {
		_, err := m.w.Write(data)
		return err
	}
	return nil
}

func (m *mux) add(id uint32, c net.Conn) {
	m.mu.Lock()
	m.conns[id] = c
	m.mu.Unlock()
}

// drop forgets a connection and closes it; it reports whether it was known.
func (m *mux) drop(id uint32) bool {
	m.mu.Lock()
	c, ok := m.conns[id]
	delete(m.conns, id)
	m.mu.Unlock()
	if ok {
		_ = c.Close()
	}
	return ok
}

func (m *mux) get(id uint32) net.Conn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conns[id]
}

func (m *mux) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, c := range m.conns {
		_ = c.Close()
		delete(m.conns, id)
	}
}

// pump copies a connection's bytes into data frames, then sends its close
// frame (unless the other side closed it first).
func (m *mux) pump(id uint32, c net.Conn) {
	buf := make([]byte, MaxPayload)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if m.send(frameData, id, buf[:n]) != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if m.drop(id) {
		_ = m.send(frameClose, id, nil)
	}
}

// deliver handles a data or close frame.
func (m *mux) deliver(f frame) {
	switch f.kind {
	case frameData:
		if c := m.get(f.id); c != nil {
			if _, err := c.Write(f.data); err != nil {
				m.drop(f.id)
				_ = m.send(frameClose, f.id, nil)
			}
		}
	case frameClose:
		m.drop(f.id)
	}
}

// Host serves the host end of the stream: it dials target for every open
// frame. It returns when the stream ends (the VM is gone) or ctx ends.
func Host(ctx context.Context, stream io.ReadWriter, target string, log *slog.Logger) error {
	m := newMux(stream, log)
	defer m.closeAll()
	var d net.Dialer
	for {
		f, err := readFrame(stream)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if f.kind != frameOpen {
			m.deliver(f)
			continue
		}
		c, err := d.DialContext(ctx, "tcp", target)
		if err != nil {
			log.Info("bridge: dial refused", "conn", f.id, "target", target, "err", err)
			if err := m.send(frameClose, f.id, nil); err != nil {
				return err
			}
			continue
		}
		log.Debug("bridge: open", "conn", f.id, "target", target)
		m.add(f.id, c)
		go m.pump(f.id, c)
	}
}

// Guest serves the guest end: every connection accepted on ln becomes a
// framed connection on stream. It returns when ln or the stream fails.
func Guest(ctx context.Context, stream io.ReadWriter, ln net.Listener, log *slog.Logger) error {
	m := newMux(stream, log)
	defer m.closeAll()
	errc := make(chan error, 2)
	go func() {
		for {
			f, err := readFrame(stream)
			if err != nil {
				errc <- err
				return
			}
			if f.kind == frameOpen {
				errc <- fmt.Errorf("%w: open frame from the host", ErrFrame)
				return
			}
			m.deliver(f)
		}
	}()
	go func() {
		var next uint32
		for {
			c, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			next++
			m.add(next, c)
			if err := m.send(frameOpen, next, nil); err != nil {
				errc <- err
				return
			}
			go m.pump(next, c)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
