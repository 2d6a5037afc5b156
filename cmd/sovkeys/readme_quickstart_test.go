package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/testkit"
)

// Markers around the README's Quickstart section.
const (
	quickstartBegin = "<!-- quickstart:begin -->"
	quickstartEnd   = "<!-- quickstart:end -->"
)

// The addresses the README's commands use: those of `make run`.
const (
	readmeGateway = "127.0.0.1:8443"
	readmeNATS    = "127.0.0.1:4222"
)

const (
	quickstartBuild = 5 * time.Minute // go build of bin/sovkeys
	quickstartReady = time.Minute     // first start: new token, CA, streams
	quickstartRun   = 3 * time.Minute // the commands themselves (two RSA-3072 keys)
	quickstartStop  = 30 * time.Second
	quickstartPoll  = 100 * time.Millisecond
)

// quickstartCommands returns the shell commands of the README's Quickstart
// section: every ```sh block between the markers, less the `make` lines
// (`make run` is the long-running node the test starts itself; `make test`
// is the suite this test is part of).
func quickstartCommands(readme string) (string, error) {
	_, rest, ok := strings.Cut(readme, quickstartBegin)
	if !ok {
		return "", fmt.Errorf("README.md has no %s", quickstartBegin)
	}
	section, _, ok := strings.Cut(rest, quickstartEnd)
	if !ok {
		return "", fmt.Errorf("README.md has no %s", quickstartEnd)
	}
	var b strings.Builder
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(section, -1)
	for _, m := range blocks {
		for _, line := range strings.SplitAfter(m[1], "\n") {
			if strings.HasPrefix(line, "make ") {
				continue
			}
			b.WriteString(line)
		}
	}
	if len(blocks) == 0 || strings.TrimSpace(b.String()) == "" {
		return "", errors.New("README.md Quickstart has no sh commands")
	}
	return b.String(), nil
}

// TestReadmeQuickstart runs the README's Quickstart as written, relative
// paths included, in a directory laid out like the repository after
// `make run` (bin/sovkeys, docs/examples, .data), against a node started as
// `make run` starts it. Only the gateway and NATS addresses are the test's
// own free ports instead of 8443 and 4222.
func TestReadmeQuickstart(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"bash", "curl", "jq", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the README quickstart needs %s (make deps installs it): %v", tool, err)
		}
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("building bin/sovkeys needs the go tool: %v", err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	commands, err := quickstartCommands(string(readme))
	if err != nil {
		t.Fatal(err)
	}

	repo := t.TempDir()
	bin := filepath.Join(repo, "bin", "sovkeys")
	buildCtx, cancelBuild := context.WithTimeout(context.Background(), quickstartBuild)
	defer cancelBuild()
	if out, err := exec.CommandContext(buildCtx, goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	script, err := os.ReadFile("../../docs/examples/volume-secret.sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(repo, "docs", "examples"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "docs", "examples", "volume-secret.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}

	gateway, natsAddr := freeLoopback(t), freeLoopback(t)
	startQuickstartNode(t, repo, gateway, natsAddr)

	commands = strings.NewReplacer(readmeGateway, gateway, readmeNATS, natsAddr).Replace(commands)
	runCtx, cancelRun := context.WithTimeout(context.Background(), quickstartRun)
	defer cancelRun()
	cmd := exec.CommandContext(runCtx, "bash", "-euo", "pipefail", "-c", commands)
	cmd.Dir = repo
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("quickstart commands failed: %v\n--- commands\n%s\n--- output\n%s", err, commands, out)
	}
	text := string(out)
	t.Logf("quickstart output:\n%s", text)

	// What the README says each step prints.
	for _, want := range []string{`"accessKeyId"`, `"ciphertext"`, "other volume: ", "-----BEGIN PUBLIC KEY-----"} {
		if !strings.Contains(text, want) {
			t.Errorf("quickstart output lacks %q", want)
		}
	}
	gen := regexp.MustCompile(`(?m)^generate-secret: ([0-9a-f]{64})$`).FindStringSubmatch(text)
	dec := regexp.MustCompile(`(?m)^decrypt-secret: ([0-9a-f]{64})$`).FindStringSubmatch(text)
	if gen == nil || dec == nil || gen[1] != dec[1] {
		t.Errorf("volume secret: generate-secret and decrypt-secret must print the same 32 bytes")
	}
	if strings.Contains(text, "other volume: null") || strings.Contains(text, "errorName") {
		t.Errorf("a call was refused or its refusal is unclear")
	}
	// Relative paths resolved from the quickstart's directory, not elsewhere.
	for _, f := range []string{"ks.json", "i-0123/cert.pem", "i-0123/key.pem", "i-0123/signing-key.pem"} {
		if _, err := os.Stat(filepath.Join(repo, f)); err != nil {
			t.Errorf("%s not written where the README says: %v", f, err)
		}
	}
}

// startQuickstartNode starts bin/sovkeys standalone in repo as `make run`
// does (data dir ./.data, unseal shares in ./.unseal-shares), waits until its
// gateway is ready and stops it when the test ends.
func startQuickstartNode(t *testing.T, repo, gateway, natsAddr string) {
	t.Helper()
	logs := &syncBuffer{} // written by exec while polls read it
	node := exec.Command(filepath.Join(repo, "bin", "sovkeys"), "standalone", "--data", filepath.Join(repo, ".data"),
		"--listen", gateway, "--nats-listen", natsAddr, "--dev-unseal-file", filepath.Join(repo, ".unseal-shares"),
		"--log-level", "warn")
	node.Dir = repo
	node.Env = cleanEnv()
	node.Stdout, node.Stderr = logs, logs
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- node.Wait() }()
	t.Cleanup(func() {
		_ = node.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(quickstartStop):
			_ = node.Process.Kill()
			<-exited
			t.Errorf("standalone did not stop within %s", quickstartStop)
		}
	})
	testkit.CheckFor(t, quickstartReady, quickstartPoll, func() error {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("standalone exited: %v\n%s", err, logs.String())
		default:
		}
		pem, err := os.ReadFile(filepath.Join(repo, ".data", "tls", "ca.pem"))
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get("https://" + gateway + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz: %s", resp.Status)
		}
		return nil
	})
}

// freeLoopback returns a free loopback host:port.
func freeLoopback(t *testing.T) string {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

// cleanEnv is the environment of a fresh terminal: this process's, less the
// SOVKEYS_ variables (the quickstart exports its own) and SOFTHSM2_CONF
// (which the in-process test node points at its own token directory).
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SOVKEYS_") && !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
			env = append(env, kv)
		}
	}
	return env
}
