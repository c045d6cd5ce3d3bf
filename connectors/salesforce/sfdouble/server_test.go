package sfdouble

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func token(t *testing.T, s *Server) string {
	t.Helper()
	resp, err := http.PostForm(s.URL+"/services/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"id"}, "client_secret": {"secret"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	return tr.AccessToken
}

func call(t *testing.T, s *Server, tok, method, path, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestRejectsWhatAnOrgRejects: documented error bodies for a bad token,
// more than 200 records, an unknown field, a missing external ID, and the
// limit header on every answer.
func TestRejectsWhatAnOrgRejects(t *testing.T) {
	s := New(Config{ClientID: "id", ClientSecret: "secret", APILimit: 50, Objects: []Object{{Name: "Account", Fields: []Field{
		{Name: "Ext__c", Type: "string", ExternalID: true}, {Name: "Name", Type: "string", Required: true}}}}})
	defer s.Close()
	tok := token(t, s)
	path := "/services/data/v62.0/composite/sobjects/Account/Ext__c"
	rec := func(i int, extra string) string {
		return fmt.Sprintf(`{"attributes":{"type":"Account"},"Ext__c":"e%d","Name":"n"%s}`, i, extra)
	}
	var many []string
	for i := range 201 {
		many = append(many, rec(i, ""))
	}
	for _, c := range []struct {
		tok, body string
		status    int
		want      string
	}{
		{"bogus", `{"records":[]}`, 401, `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`},
		{tok, `{"allOrNone":false,"records":[` + strings.Join(many, ",") + `]}`, 400, `"errorCode":"EXCEEDED_ID_LIMIT"`},
		{tok, `{"allOrNone":false,"records":[` + rec(1, `,"Colour__c":"red"`) + `]}`, 400, `No such column 'Colour__c' on sobject of type Account`},
		{tok, `{"allOrNone":false,"records":[{"attributes":{"type":"Account"},"Name":"x"},` + rec(2, "") + `]}`, 200, `"statusCode":"MISSING_ARGUMENT"`},
		{tok, `{"allOrNone":false,"records":[{"attributes":{"type":"Account"},"Ext__c":"e3"}]}`, 200, `"statusCode":"REQUIRED_FIELD_MISSING"`},
		{tok, `{"allOrNone":false,"records":[` + rec(4, "") + `,` + rec(4, "") + `]}`, 200, `"statusCode":"DUPLICATE_VALUE"`},
	} {
		code, hdr, body := call(t, s, c.tok, http.MethodPatch, path, c.body)
		if code != c.status || !strings.Contains(body, c.want) {
			t.Errorf("%d %s, want %d %s", code, body, c.status, c.want)
		}
		if !strings.HasPrefix(hdr.Get("Sforce-Limit-Info"), "api-usage=") {
			t.Errorf("no Sforce-Limit-Info: %v", hdr)
		}
	}
	s.SetRequestLimitExceeded(true)
	code, _, body := call(t, s, tok, http.MethodGet, "/services/data/v62.0/limits", "")
	if code != 403 || !strings.Contains(body, `"errorCode":"REQUEST_LIMIT_EXCEEDED"`) {
		t.Errorf("%d %s", code, body)
	}
	s.SetRequestLimitExceeded(false)
	s.SetAPIUsage(50)
	if code, _, _ := call(t, s, tok, http.MethodGet, "/services/data/v62.0/limits", ""); code != 403 {
		t.Errorf("over the daily limit: %d", code)
	}
	resp, _ := http.PostForm(s.URL+"/services/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"id"}, "client_secret": {"nope"}})
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"error":"invalid_client"`) {
		t.Errorf("token: %d %s", resp.StatusCode, b)
	}
}
