package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// imdsBase is the EC2 instance metadata service (link-local, never routed).
const imdsBase = "http://169.254.169.254"

// imdsInstanceID reads the instance id with IMDSv2 (a session token first).
func imdsInstanceID(ctx context.Context) (string, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, imdsBase+"/latest/api/token", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	token, err := imdsDo(hc, req)
	if err != nil {
		return "", err
	}
	req, err = http.NewRequestWithContext(ctx, http.MethodGet, imdsBase+"/latest/meta-data/instance-id", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("X-aws-ec2-metadata-token", token)
	id, err := imdsDo(hc, req)
	if err != nil {
		return "", err
	}
	if !vs.ValidID(id) {
		return "", fmt.Errorf("imds: malformed instance id")
	}
	return id, nil
}

func imdsDo(hc *http.Client, req *http.Request) (string, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("imds: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", fmt.Errorf("imds: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("imds: %s: status %d", req.URL.Path, resp.StatusCode)
	}
	return strings.TrimSpace(string(b)), nil
}
