// Command sk-vmguest runs inside the test VM of test/vm (it is no part of
// the product):
//
//	sk-vmguest bridge NAME LISTEN   carry TCP connections accepted on LISTEN
//	                                (127.0.0.1:PORT) over the virtio-serial
//	                                port NAME to the host (test/vm/internal/bridge)
//	sk-vmguest stamp                copy stdin to stdout, each line prefixed
//	                                with the time since boot ("T 12.345 ")
//	sk-vmguest rsa BITS COUNT       time RSA key generations (what sk-agent
//	                                does for every call): median, slowest
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sovkeys/sovkeys/test/vm/internal/bridge"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sk-vmguest:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: sk-vmguest bridge NAME LISTEN | stamp | rsa BITS COUNT")
	}
	switch {
	case args[0] == "bridge" && len(args) == 3:
		return runBridge(args[1], args[2])
	case args[0] == "stamp" && len(args) == 1:
		return stamp(os.Stdin, os.Stdout)
	case args[0] == "rsa" && len(args) == 3:
		bits, err1 := strconv.Atoi(args[1])
		n, err2 := strconv.Atoi(args[2])
		if err := errors.Join(err1, err2); err != nil || n < 1 {
			return fmt.Errorf("rsa BITS COUNT: %v", err)
		}
		// RSA key generation time varies a lot from key to key (prime
		// search): print the median and the slowest of n.
		times := make([]float64, n)
		for i := range times {
			start := time.Now()
			if _, err := rsa.GenerateKey(rand.Reader, bits); err != nil {
				return err
			}
			times[i] = time.Since(start).Seconds()
		}
		sort.Float64s(times)
		fmt.Printf("median=%.2f max=%.2f n=%d\n", times[n/2], times[n-1], n)
		return nil
	}
	return fmt.Errorf("unknown command %q", strings.Join(args, " "))
}

// portDevice finds the device node of the virtio-serial port named name
// (no udev here, so no /dev/virtio-ports/NAME link).
func portDevice(name string) (string, error) {
	ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range ports {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(p)), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q", name)
}

func runBridge(name, listen string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	dev, err := portDevice(name)
	if err != nil {
		return err
	}
	port, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer port.Close()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return bridge.Guest(ctx, port, ln, log)
}

// uptime is the time since boot, from /proc/uptime (the guest has no
// synchronised clock; differences are what matter).
func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

// stamp prefixes every piece of input with its arrival time. A line the
// writer has not finished yet (sk-agent prints "step..." then "OK" when
// the step is done) is stamped when it arrives, so both ends of a step
// carry a time.
func stamp(in io.Reader, out io.Writer) error {
	base, start := uptime(), time.Now()
	r := bufio.NewReader(in)
	w := bufio.NewWriter(out)
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			t := base + time.Since(start).Seconds()
			for _, piece := range strings.SplitAfter(string(buf[:n]), "\n") {
				if piece == "" {
					continue
				}
				fmt.Fprintf(w, "T %.3f %s", t, piece)
				if !strings.HasSuffix(piece, "\n") {
					fmt.Fprintln(w)
				}
			}
			_ = w.Flush()
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
