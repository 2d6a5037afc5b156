package testkit

import (
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// FindBinary looks for a tool the project's scripts build (versitygw,
// jaeger) in PATH, then $(go env GOPATH)/bin, then <repo>/bin; install says
// how to get it when it is in none of them.
func FindBinary(name, install string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	var tried []string
	for _, dir := range []string{gopathBin(), repoBin()} {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		tried = append(tried, p)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH nor at %s; %s", name, strings.Join(tried, ", "), install)
}

func gopathBin() string {
	out, err := exec.Command("go", "env", "GOPATH").Output()
	gopath := strings.TrimSpace(string(out))
	if err != nil || gopath == "" {
		gopath = build.Default.GOPATH
	}
	if gopath == "" {
		return ""
	}
	// GOPATH may list several directories; go install uses the first.
	return filepath.Join(filepath.SplitList(gopath)[0], "bin")
}

// repoBin is the bin directory next to the go.mod enclosing the working
// directory (tests run in their package directory).
func repoBin() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "bin")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}
