package testkit

import (
	"net"
	"strconv"
	"testing"
)

// FreePortBase finds a loopback port base such that base+off is free for
// every offset (a cluster's client, route and monitoring ports, as
// `sovkeys cluster init --port-base` lays them out: base+i, base+100+i,
// base+200+i), keeping base+300 within range.
func FreePortBase(t testing.TB, offsets ...int) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if base < 2000 || base+300 > 65000 {
			continue
		}
		ok := true
		for _, off := range offsets {
			c, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+off)))
			if err != nil {
				ok = false
				break
			}
			c.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}
