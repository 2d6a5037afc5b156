package bridge

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// stream is one end of a bidirectional byte stream (as the serial port).
type stream struct {
	io.Reader
	io.Writer
}

func pair() (host, guest stream) {
	hr, gw := io.Pipe()
	gr, hw := io.Pipe()
	return stream{hr, hw}, stream{gr, gw}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Connections through the bridge carry bytes both ways, many at once, and
// a refused dial on the host reaches the guest's client as a closed
// connection.
func TestBridge(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	echo := listen(t)
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	h, g := pair()
	target := echo.Addr().String()
	go func() { _ = Host(ctx, h, target, log) }()
	gl := listen(t)
	go func() { _ = Guest(ctx, g, gl, log) }()

	big := bytes.Repeat([]byte("0123456789abcdef"), 10000) // several frames
	done := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			c, err := net.Dial("tcp", gl.Addr().String())
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			go func() { _, _ = c.Write(big) }()
			got := make([]byte, len(big))
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil {
				done <- err
				return
			}
			if !bytes.Equal(got, big) {
				done <- io.ErrUnexpectedEOF
				return
			}
			done <- nil
		}()
	}
	for i := 0; i < 4; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}

	// The target goes away: the client's connection is closed, not hung.
	echo.Close()
	c, err := net.Dial("tcp", gl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after a refused dial: %d %v, want EOF", n, err)
	}
}

// A malformed frame stops the host side with ErrFrame.
func TestMalformedFrame(t *testing.T) {
	for _, in := range [][]byte{
		{'X', 0, 0, 0, 1, 0, 0, 0, 0},
		{'D', 0, 0, 0, 1, 0xff, 0, 0, 0},
		{'O', 0, 0, 0, 1, 0, 0, 0, 1, 'x'},
	} {
		err := Host(context.Background(), stream{bytes.NewReader(in), io.Discard}, "127.0.0.1:1", slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil || !bytesIsFrameErr(err) {
			t.Fatalf("%q: %v, want ErrFrame", in, err)
		}
	}
}

func bytesIsFrameErr(err error) bool { return err != nil && errors.Is(err, ErrFrame) }
