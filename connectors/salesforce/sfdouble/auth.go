package sfdouble

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// oauthError is the token endpoint's error body (RFC 6749 5.2).
type oauthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.count("token")
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusBadRequest, oauthError{"invalid_request", "must use HTTP POST"})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, oauthError{"invalid_request", "malformed form"})
		return
	}
	jwtGrant := false
	switch r.PostForm.Get("grant_type") {
	case "client_credentials":
		if s.cfg.ClientID == "" || r.PostForm.Get("client_id") != s.cfg.ClientID || r.PostForm.Get("client_secret") != s.cfg.ClientSecret {
			writeJSON(w, http.StatusBadRequest, oauthError{"invalid_client", "invalid client credentials"})
			return
		}
	case "urn:ietf:params:oauth:grant-type:jwt-bearer":
		if code, desc := s.verifyAssertion(r.PostForm.Get("assertion")); code != "" {
			writeJSON(w, http.StatusBadRequest, oauthError{code, desc})
			return
		}
		jwtGrant = true
	case "":
		writeJSON(w, http.StatusBadRequest, oauthError{"invalid_request", "grant type not supported"})
		return
	default:
		writeJSON(w, http.StatusBadRequest, oauthError{"unsupported_grant_type", "grant type not supported"})
		return
	}
	var b [24]byte
	_, _ = rand.Read(b[:])
	tok := "00Dxx0000000001!" + base64.RawURLEncoding.EncodeToString(b[:])
	s.mu.Lock()
	var exp time.Time
	if s.cfg.TokenTTL > 0 {
		exp = time.Now().Add(s.cfg.TokenTTL)
	}
	s.tokens[tok] = exp
	s.stats.TokensIssued++
	s.mu.Unlock()
	resp := map[string]string{
		"access_token": tok,
		"scope":        "api",
		"instance_url": s.URL,
		"id":           s.URL + "/id/00Dxx0000000001EAA/005xx000001Sv6eAAC",
		"token_type":   "Bearer",
	}
	if !jwtGrant {
		sig := sha256.Sum256([]byte(tok))
		resp["signature"] = base64.StdEncoding.EncodeToString(sig[:])
		resp["issued_at"] = strconv.FormatInt(time.Now().UnixMilli(), 10)
		resp["api_instance_url"] = s.URL
	}
	writeJSON(w, http.StatusOK, resp)
}

// verifyAssertion checks an RS256 JWT bearer assertion; it returns an
// OAuth error code and description, or "" when the assertion is good.
func (s *Server) verifyAssertion(a string) (string, string) {
	if s.cfg.PublicKey == nil {
		return "invalid_client", "invalid client credentials"
	}
	parts := strings.Split(a, ".")
	if len(parts) != 3 {
		return "invalid_grant", "invalid assertion"
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	pb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return "invalid_grant", "invalid assertion"
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(hb, &hdr) != nil || hdr.Alg != "RS256" {
		return "invalid_grant", "invalid assertion"
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if rsa.VerifyPKCS1v15(s.cfg.PublicKey, crypto.SHA256, sum[:], sig) != nil {
		return "invalid_grant", "invalid assertion"
	}
	var c struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp int64           `json:"exp"`
	}
	if json.Unmarshal(pb, &c) != nil {
		return "invalid_grant", "invalid assertion"
	}
	if c.Iss != s.cfg.ClientID {
		return "invalid_client_id", "client identifier invalid"
	}
	if c.Sub != s.cfg.Username {
		return "invalid_grant", "user hasn't approved this consumer"
	}
	var aud []string
	var one string
	if json.Unmarshal(c.Aud, &one) == nil {
		aud = []string{one}
	} else {
		_ = json.Unmarshal(c.Aud, &aud)
	}
	okAud := false
	for _, x := range aud {
		okAud = okAud || x == s.cfg.Audience
	}
	if !okAud {
		return "invalid_grant", "audience is invalid"
	}
	now := time.Now().Unix()
	if c.Exp <= now {
		return "invalid_grant", "expired authorization code"
	}
	// Salesforce wants the assertion to expire within a few minutes.
	if c.Exp > now+300 {
		return "invalid_grant", "invalid assertion"
	}
	return "", ""
}

// newID returns an 18-character record ID with the object's prefix.
func newID(prefix string, seq int64) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	s := prefix + "xx" + strings.ToUpper(strconv.FormatInt(seq, 36))
	s += strings.ToUpper(hex.EncodeToString(b[:]))
	for len(s) < 18 {
		s += "A"
	}
	return s[:18]
}
