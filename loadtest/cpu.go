package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPUReport is the processor time the generator and, with -node-pid, the
// node used during the measured window: on a machine they share, it says
// how much of the machine each had and what one answer cost each of them.
type CPUReport struct {
	WindowSeconds  float64 `json:"windowSeconds"`
	ClientCores    float64 `json:"clientCores"`           // generator CPU seconds per second
	ClientMsPerOK  float64 `json:"clientMsPerOk"`         // generator CPU per successful answer
	NodeCores      float64 `json:"nodeCores,omitempty"`   // node CPU seconds per second
	NodeMsPerOK    float64 `json:"nodeMsPerOk,omitempty"` // node CPU per successful answer
	NodePID        int     `json:"nodePid,omitempty"`
	NodeSampleFail string  `json:"nodeSampleError,omitempty"`
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU reads the user+system CPU time of pid from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(string(b))
}

// parseProcStat takes utime and stime (fields 14 and 15) of a stat line;
// the command name (field 2) may hold spaces and parentheses, so fields
// are counted after its last ')'.
func parseProcStat(line string) (time.Duration, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, errors.New("loadtest: malformed /proc stat line")
	}
	f := strings.Fields(line[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, errors.New("loadtest: short /proc stat line")
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("loadtest: /proc stat time %q: %w", s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// cpuSample is the CPU used so far by the generator and the node.
type cpuSample struct {
	at         time.Time
	self, node time.Duration
	nodeErr    error
}

func sampleCPU(now time.Time, nodePID int) cpuSample {
	s := cpuSample{at: now, self: selfCPU()}
	if nodePID > 0 {
		s.node, s.nodeErr = procCPU(nodePID)
	}
	return s
}

// watchCPU samples CPU time when the measured window opens (from+warmup)
// and when it closes (+duration). The result arrives on the channel once
// both samples are taken; nothing arrives when ctx ends first.
func watchCPU(ctx context.Context, cfg Config, from time.Time, now func() time.Time) <-chan [2]cpuSample {
	out := make(chan [2]cpuSample, 1)
	go func() {
		var s [2]cpuSample
		for i, at := range []time.Time{from.Add(cfg.Warmup), from.Add(cfg.Warmup + cfg.Duration)} {
			if d := at.Sub(now()); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			s[i] = sampleCPU(now(), cfg.NodePID)
		}
		out <- s
	}()
	return out
}

// cpuReport turns two samples and the successes between them into figures.
func cpuReport(s [2]cpuSample, ok uint64, nodePID int) *CPUReport {
	win := s[1].at.Sub(s[0].at).Seconds()
	if win <= 0 {
		return nil
	}
	r := &CPUReport{WindowSeconds: win, ClientCores: (s[1].self - s[0].self).Seconds() / win, NodePID: nodePID}
	if ok > 0 {
		r.ClientMsPerOK = ms(s[1].self-s[0].self) / float64(ok)
	}
	if nodePID > 0 {
		if err := errors.Join(s[0].nodeErr, s[1].nodeErr); err != nil {
			r.NodeSampleFail = err.Error()
			return r
		}
		r.NodeCores = (s[1].node - s[0].node).Seconds() / win
		if ok > 0 {
			r.NodeMsPerOK = ms(s[1].node-s[0].node) / float64(ok)
		}
	}
	return r
}
