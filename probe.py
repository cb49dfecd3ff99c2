import time, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
def conn(cid, user, v5=True, will=None, pw=None):
    ev = {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if user: c.username_pw_set(user, pw)
    if will: c.will_set(will, b"w")
    c.on_connect = lambda cl,u,f,rc,p: ev.setdefault("connack", rc.value if hasattr(rc,'value') else rc)
    c.on_disconnect = lambda cl,u,f,rc,p: ev.setdefault("disconnect", rc.value if hasattr(rc,'value') else rc)
    c.on_publish = lambda cl,u,mid,rc,p: ev.setdefault("puback", rc.value)
    c.connect("127.0.0.1", 18941); c.loop_start(); time.sleep(0.5)
    return c, ev
c, ev = conn("x"*130, "alice"); print("long id v5", ev); c.disconnect(); c.loop_stop()
c, ev = conn("x"*130, "alice", v5=False); print("long id v3", ev); c.loop_stop()
c, ev = conn("w1", "alice", will="secrets/w"); print("will denied v5", ev); c.loop_stop()
c, ev = conn("p3", "alice", v5=False); c.publish("secrets/x", b"1", qos=1); time.sleep(0.5); print("v3 publish denied", ev); c.disconnect(); c.loop_stop()
a, eva = conn("t1", "alice"); b, evb = conn("t1", "alice"); time.sleep(0.3); print("takeover old v5", eva, "new", evb); b.disconnect(); a.loop_stop(); b.loop_stop()
c, ev = conn("", "alice", v5=False); print("empty id v3", ev); c.disconnect(); c.loop_stop()
