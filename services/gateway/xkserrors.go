package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
)

// maxXKSErrorMessage: the specification wants errorMessage shorter than 512
// characters.
const maxXKSErrorMessage = 511

// writeXKSError answers an XKS request with err: the status and errorName of
// its code and its caller-safe message (errors without a code become
// InternalException with a generic message). A 405 carries "Allow: POST",
// the only method of every XKS URI.
func writeXKSError(w http.ResponseWriter, err error) {
	code := shared.CodeOf(err)
	status, name := xks.StatusOf(code)
	noteError(w, code, name)
	if status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", http.MethodPost)
	}
	writeJSON(w, status, xks.ErrorResponse{
		ErrorName:    name,
		ErrorMessage: xksErrorMessage(shared.MessageOf(err)),
	})
}

// xksErrorMessage fits msg to the specification: printable ASCII (0x20 to
// 0x7e) only, each other character replaced by '?', and fewer than 512
// characters.
func xksErrorMessage(msg string) string {
	out := make([]byte, 0, min(len(msg), maxXKSErrorMessage))
	for _, r := range msg {
		if len(out) == maxXKSErrorMessage {
			break
		}
		if r < 0x20 || r > 0x7e {
			r = '?'
		}
		out = append(out, byte(r))
	}
	return string(out)
}

// encodeFailureBody answers a response that could not be encoded (a bug). It
// carries the error fields of both APIs the gateway serves: XKS errorName and
// errorMessage, and the volume-secret API's message.
const encodeFailureBody = `{"errorName":"InternalException","errorMessage":"sovkeys: internal error",` +
	`"message":"sovkeys: internal error"}`

// writeJSON writes v as a JSON response with status. Responses may carry
// plaintext or key material, so they must not be cached. If v cannot be
// encoded the caller gets a 500 with encodeFailureBody instead.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(encodeFailureBody)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body) // a failed write means the caller has gone
}
