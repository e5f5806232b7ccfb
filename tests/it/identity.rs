//! `/auth/*`: registration, login, refresh rotation with reuse detection, logout, info,
//! the token matrix, external identity providers, admins, rate limits.

use std::time::Duration;

use base64::Engine;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, SECRET, chrono_now, sign};

fn fixture(name: &str) -> String {
    format!("{}/../tests/it/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

async fn register(d: &Daemon, email: &str) -> Value {
    let (s, body) = d
        .post(
            "/auth/registration",
            None,
            &json!({"email": email, "password": "correct horse", "name": "Ann", "birthday": "1990-02-03"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn register_login_refresh_logout_and_info() {
    let d = Daemon::start(Opts::new()).await;
    let mail = email();
    let body = register(&d, &mail).await;
    assert_eq!(body["status"], "Success");
    let user_id = body["user_id"].as_str().unwrap_or_default().to_string();
    let access = body["access_token"].as_str().unwrap_or_default().to_string();
    let refresh = body["refresh_token"].as_str().unwrap_or_default().to_string();

    let c = claims_of(&access);
    assert_eq!(
        (c["token_type"].as_str(), c["sub"].as_str(), c["uid"].as_str()),
        (Some("access"), Some(user_id.as_str()), Some(user_id.as_str()))
    );
    assert_eq!((c["iss"].as_str(), c["aud"].as_str()), (Some("conveyor"), Some("conveyor")));
    assert_eq!(c["roles"], json!(["user"]));
    assert!(c["jti"].is_string() && c["iat"].is_i64() && c["exp"].is_i64(), "{c}");
    assert!(!access.contains(&mail) && c.get("email").is_none(), "no email in tokens");
    assert_eq!(claims_of(&refresh)["token_type"], "refresh");

    // Duplicate (the email is normalised), invalid fields, missing fields.
    let upper = mail.to_uppercase();
    let (s, b) = d
        .post(
            "/auth/registration",
            None,
            &json!({"email": upper, "password": "another one", "name": "B", "birthday": "1991-01-01"}),
        )
        .await;
    assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "email_taken"), "{b}");
    let (s, b) = d
        .post(
            "/auth/registration",
            None,
            &json!({"email": "nope", "password": "short", "name": "", "birthday": "string"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let fields: Vec<&str> =
        b["error"]["details"].as_array().into_iter().flatten().filter_map(|f| f["field"].as_str()).collect();
    assert_eq!(fields, ["email", "password", "name", "birthday"]);
    let (s, b) = d.post("/auth/registration", None, &json!({"email": email()})).await;
    assert_eq!(
        (s, b["error"]["details"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password")),
        "{b}"
    );
    let (s, _, b) = d.request(Method::POST, "/auth/login", None, &[], b"{not json".to_vec()).await;
    assert_eq!((s, error_code(&b)), (StatusCode::BAD_REQUEST, "malformed_json"));

    // One answer for a wrong password and an unknown email.
    let (s1, wrong) = d.post("/auth/login", None, &json!({"email": mail, "password": "wrong password"})).await;
    let (s2, unknown) = d.post("/auth/login", None, &json!({"email": email(), "password": "correct horse"})).await;
    assert_eq!((s1, s2), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
    assert_eq!(wrong, unknown, "login must not reveal whether the email exists");
    let (s, login) =
        d.post("/auth/login", None, &json!({"email": format!(" {upper} "), "password": "correct horse"})).await;
    assert_eq!((s, login["user_id"].as_str()), (StatusCode::OK, Some(user_id.as_str())), "{login}");

    // Info, with the bearer scheme and with seed 004's bare header.
    let (s, info) = d.get("/auth/info", Some(&access)).await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!((info["user_id"].as_str(), info["email"].as_str()), (Some(user_id.as_str()), Some(mail.as_str())));
    assert_eq!(info["roles"], json!(["user"]));
    assert!(info["created_at"].is_string());
    let (s, _, _) = d.request(Method::GET, "/auth/info", None, &[("authorization", access.as_str())], vec![]).await;
    assert_eq!(s, StatusCode::OK, "a bare token in Authorization is accepted");
    assert_eq!(d.get("/auth/info", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(d.get("/auth/info", Some(&refresh)).await.0, StatusCode::UNAUTHORIZED, "refresh token used as access");

    // Refresh: only with a refresh token; rotates; reuse revokes the family.
    let (s, b) = d.post("/auth/refresh", None, &json!({"token": access})).await;
    assert_eq!((s, b["error"]["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("a refresh token is required")));
    let (s, rotated) = d.post("/auth/refresh", None, &json!({"token": refresh})).await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let access2 = rotated["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(d.get("/auth/info", Some(&access2)).await.0, StatusCode::OK);
    let (s, _) = d.post("/auth/refresh", None, &json!({"token": refresh})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a used refresh token is refused");
    assert_eq!(d.get("/auth/info", Some(&access2)).await.0, StatusCode::UNAUTHORIZED, "its whole family is revoked");
    let refresh2 = rotated["refresh_token"].as_str().unwrap_or_default();
    assert_eq!(d.post("/auth/refresh", None, &json!({"token": refresh2})).await.0, StatusCode::UNAUTHORIZED);
    // Another login (another family) is untouched.
    let other = login["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(d.get("/auth/info", Some(&other)).await.0, StatusCode::OK);

    // Logout revokes the token and its session.
    let (s, b) = d.post("/auth/logout", None, &json!({"token": other})).await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("Success")));
    assert_eq!(d.get("/auth/info", Some(&other)).await.0, StatusCode::UNAUTHORIZED);
    let login_refresh = login["refresh_token"].as_str().unwrap_or_default();
    assert_eq!(d.post("/auth/refresh", None, &json!({"token": login_refresh})).await.0, StatusCode::UNAUTHORIZED);

    // Aliases of the probes.
    assert_eq!(d.get("/auth/healthz", None).await.0, StatusCode::OK);
    assert_eq!(d.get("/auth/ready", None).await.0, StatusCode::OK);
}

fn external_opts() -> Opts {
    Opts::new()
        .env(
            "CONVEYOR_AUTH__EXTERNAL_KEYS",
            format!(
                r#"[{{kid="idp-rsa",algorithm="RS256",public_key_file="{}"}},{{kid="idp-ed",algorithm="EdDSA",public_key_file="{}"}}]"#,
                fixture("idp-rsa.pub"),
                fixture("idp-ed25519.pub")
            ),
        )
        .env("CONVEYOR_AUTH__EXTERNAL_ISSUER", "https://idp.example")
        .env("CONVEYOR_AUTH__PREVIOUS_KEYS", r#"[{kid="old",secret="the-old-secret"}]"#)
}

fn encode(header: Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap_or_else(|e| panic!("encode: {e}"))
}

fn with_kid(alg: Algorithm, kid: &str) -> Header {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    h
}

#[tokio::test]
async fn token_matrix_refuses_every_bad_token() {
    let d = Daemon::start(external_opts()).await;
    let now = chrono_now();
    let base = json!({"sub": "someone", "roles": ["user"], "exp": now + 600});
    let with = |extra: Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    };
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("idp-rsa.key")).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let ed = EncodingKey::from_ed_pem(&std::fs::read(fixture("idp-ed25519.key")).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let idp = with(json!({"iss": "https://idp.example", "aud": "conveyor"}));

    // Accepted: seed 003 style, Conveyor style, a rotated-out key, both external algorithms.
    let good = [
        ("seed 003 token", sign(&base)),
        ("iss and aud", sign(&with(json!({"iss": "conveyor", "aud": ["other", "conveyor"]})))),
        (
            "previous key",
            encode(with_kid(Algorithm::HS256, "old"), &base, &EncodingKey::from_secret(b"the-old-secret")),
        ),
        ("RS256 from the IdP", encode(with_kid(Algorithm::RS256, "idp-rsa"), &idp, &rsa)),
        ("EdDSA from the IdP", encode(with_kid(Algorithm::EdDSA, "idp-ed"), &idp, &ed)),
    ];
    for (what, t) in &good {
        let (s, b) = d.get("/auth/info", Some(t)).await;
        assert_eq!(s, StatusCode::OK, "{what}: {b}");
    }

    // Refused, each with 401.
    let valid = sign(&base);
    let mut parts: Vec<String> = valid.split('.').map(str::to_string).collect();
    let mut forged = claims_of(&valid);
    forged["roles"] = json!(["admin"]);
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap_or_default());
    let tampered = parts.join(".");
    let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{}.", valid.split('.').nth(1).unwrap_or_default());
    let rsa_public = std::fs::read(fixture("idp-rsa.pub")).unwrap_or_default();
    let confused = encode(with_kid(Algorithm::HS256, "idp-rsa"), &idp, &EncodingKey::from_secret(&rsa_public));
    let revoked = {
        let body = register(&d, &email()).await;
        let t = body["access_token"].as_str().unwrap_or_default().to_string();
        assert_eq!(d.post("/auth/logout", None, &json!({"token": t})).await.0, StatusCode::OK);
        t
    };
    let refresh = register(&d, &email()).await["refresh_token"].as_str().unwrap_or_default().to_string();
    let bad = [
        ("expired", sign(&with(json!({"exp": now - 3600})))),
        ("not yet valid", sign(&with(json!({"nbf": now + 3600})))),
        ("wrong audience", sign(&with(json!({"aud": "someone-else"})))),
        ("wrong issuer", sign(&with(json!({"iss": "https://evil.example"})))),
        ("alg none", alg_none),
        ("HS256 signed with the RS256 public key", confused),
        ("tampered payload", tampered),
        (
            "unknown kid",
            encode(with_kid(Algorithm::HS256, "nobody"), &base, &EncodingKey::from_secret(SECRET.as_bytes())),
        ),
        ("wrong secret", encode(Header::new(Algorithm::HS256), &base, &EncodingKey::from_secret(b"guess"))),
        ("IdP token with a wrong issuer", encode(with_kid(Algorithm::RS256, "idp-rsa"), &base, &rsa)),
        ("revoked", revoked),
        ("refresh token used as access", refresh),
        ("garbage", "not-a-token".to_string()),
    ];
    for (what, t) in &bad {
        let (s, b) = d.get("/auth/info", Some(t)).await;
        assert_eq!((s, error_code(&b)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{what}: {b}");
        let (s, _) = d.get("/resource/x", Some(t)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what} on another route");
    }
}

#[tokio::test]
async fn strict_policy_requires_issuer_and_audience() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_AUTH__REQUIRE_ISSUER_AUDIENCE", "true")).await;
    let exp = chrono_now() + 600;
    let (s, _) = d.get("/auth/info", Some(&sign(&json!({"sub": "a", "exp": exp})))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "seed 003 tokens are refused under the strict policy");
    let full = sign(&json!({"sub": "a", "exp": exp, "iss": "conveyor", "aud": "conveyor"}));
    assert_eq!(d.get("/auth/info", Some(&full)).await.0, StatusCode::OK);
    let body = register(&d, &email()).await;
    assert_eq!(d.get("/auth/info", Some(body["access_token"].as_str().unwrap_or_default())).await.0, StatusCode::OK);
}

#[tokio::test]
async fn revocation_survives_losing_the_cache() {
    let mut d = Daemon::start(Opts::new()).await;
    let body = register(&d, &email()).await;
    let access = body["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(d.post("/auth/logout", None, &json!({"token": access})).await.0, StatusCode::OK);
    assert_eq!(d.get("/auth/info", Some(&access)).await.0, StatusCode::UNAUTHORIZED);
    d.terminate(Duration::from_secs(30)).await;
    // A restart empties the in-process cache; on Redis, a fresh key prefix is an empty cache.
    let opts = Opts::restart_of(&mut d).env("CONVEYOR_CACHE__KEY_PREFIX", format!("{}-flushed:", d.names.id));
    let d = Daemon::start(opts).await;
    let (s, b) = d.get("/auth/info", Some(&access)).await;
    assert_eq!((s, b["error"]["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("token revoked")), "{b}");
}

#[tokio::test]
async fn admins_from_bootstrap_and_cli() {
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_AUTH__BOOTSTRAP_ADMIN_EMAIL", "root@example.com")
            .env("CONVEYOR_AUTH__BOOTSTRAP_ADMIN_PASSWORD", "bootstrap-pass"),
    )
    .await;
    let (s, login) =
        d.post("/auth/login", None, &json!({"email": "root@example.com", "password": "bootstrap-pass"})).await;
    assert_eq!(s, StatusCode::OK, "{login}");
    let admin = login["access_token"].as_str().unwrap_or_default();
    assert_eq!(claims_of(admin)["roles"], json!(["user", "admin"]));
    assert_eq!(d.get("/admin/dead-letters", Some(admin)).await.0, StatusCode::OK);

    let user = register(&d, &email()).await;
    let user_token = user["access_token"].as_str().unwrap_or_default();
    assert_eq!(d.get("/admin/dead-letters", Some(user_token)).await.0, StatusCode::FORBIDDEN);

    let out = d
        .cli(&["user", "create", "--email", "ops@example.com", "--admin"])
        .env("CONVEYOR_USER_PASSWORD", "from-the-cli")
        .output()
        .unwrap_or_else(|e| panic!("conveyor user create: {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("roles=user,admin"));
    let (s, ops) = d.post("/auth/login", None, &json!({"email": "ops@example.com", "password": "from-the-cli"})).await;
    assert_eq!(s, StatusCode::OK, "{ops}");
    assert_eq!(
        d.get("/admin/dead-letters", Some(ops["access_token"].as_str().unwrap_or_default())).await.0,
        StatusCode::OK
    );
    let again = d
        .cli(&["user", "create", "--email", "OPS@example.com"])
        .env("CONVEYOR_USER_PASSWORD", "x-long-enough")
        .output();
    assert!(again.is_ok_and(|o| !o.status.success()), "a taken email fails the CLI");
}

#[tokio::test]
async fn repeated_wrong_logins_are_throttled_per_client() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_RATE_LIMIT__AUTH_PER_IP", "{per_period=1,period_secs=60,burst=5}"))
        .await;
    let mail = email();
    register(&d, &mail).await; // spends client 127.0.0.1's budget, not the attacker's
    let wrong = serde_json::to_vec(&json!({"email": mail, "password": "guess guess"})).unwrap_or_default();
    let attacker = [("x-forwarded-for", "203.0.113.7")];
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let (s, h, b) = d.request(Method::POST, "/auth/login", None, &attacker, wrong.clone()).await;
        statuses.push(s.as_u16());
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((h, b));
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let (headers, body) = limited.unwrap_or_default();
    let retry: u64 = headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert_eq!(error_code(&body), "rate_limited");

    // Another client still gets in, and the service keeps answering.
    let right = serde_json::to_vec(&json!({"email": mail, "password": "correct horse"})).unwrap_or_default();
    let (s, _, _) = d.request(Method::POST, "/auth/login", None, &[("x-forwarded-for", "198.51.100.2")], right).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d.get("/health", None).await.0, StatusCode::OK);
    let text = d.metrics().await;
    let counted = crate::harness::metric_sum(&text, "conveyor_http_rate_limited_total", "group=\"auth\"");
    assert_eq!(counted, 3.0, "{text}");
}
